"""Every pointer into docs/ names a file and a heading that exist."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, 'docs')
# `docs/method.md#variants` anywhere; `(records.md#features)` inside docs/.
_POINTER = re.compile(r'\bdocs/([\w-]+\.md)(?:#([\w-]+))?')
_LOCAL_LINK = re.compile(r'\]\(([\w-]+\.md)?(?:#([\w-]+))?\)')
_SKIP_DIRS = {'.git', '__pycache__', 'build', 'dist', '.venv', 'tmp',
              'demo_output', '.pytest_cache', '.ruff_cache'}


def anchor(heading: str) -> str:
  """The anchor GitHub gives a Markdown heading."""
  text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return text.replace(' ', '-')


def anchors(name: str) -> set[str]:
  with open(os.path.join(DOCS, name)) as f:
    return {anchor(line.lstrip('#')) for line in f if line.startswith('#')}


def text_files():
  for root, dirs, files in os.walk(REPO):
    dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and
               not d.endswith('.egg-info')]
    for name in files:
      if name.endswith(('.py', '.md', '.toml', '.sh', '.txt')):
        yield os.path.join(root, name)


def test_headings_give_the_anchors_pointers_use():
  assert anchor('The contrastive detection loss') == (
      'the-contrastive-detection-loss')
  assert anchor('Results of the paper') == 'results-of-the-paper'
  assert 'mask-pooling-and-sampling' in anchors('method.md')
  assert 'released-checkpoints' in anchors('records.md')


def test_every_pointer_into_docs_resolves():
  targets = {n: anchors(n) for n in os.listdir(DOCS) if n.endswith('.md')}
  assert {'method.md', 'records.md', 'design.md'} <= set(targets)
  broken = []
  for path in text_files():
    with open(path, encoding='utf-8') as f:
      text = f.read()
    found = list(_POINTER.findall(text))
    if os.path.dirname(path) == DOCS:
      own = os.path.basename(path)
      found += [(n or own, a) for n, a in _LOCAL_LINK.findall(text)]
    for name, section in found:
      if name not in targets or (section and section not in targets[name]):
        rel = os.path.relpath(path, REPO)
        broken.append(f'{rel}: docs/{name}#{section}')
  assert not broken, 'pointers to missing docs or headings:\n' + '\n'.join(
      broken)
