"""Console entry points: each runs one command as `python -m` runs it.

`pip install .` declares these as commands (pyproject.toml,
`[project.scripts]`): `detcon-pretrain` is `python -m detcon.main_loop`,
`detcon-generate-masks` is `python generate_fh_masks_for_imagenet.py`, and so
on. An entry executes the command's module as `__main__` (its
`if __name__ == '__main__'` block included, `sys.argv[0]` set to the module's
file), so flags, `--help`, messages and exit codes are the same both ways.
"""

import runpy

# Console script -> the module it runs.
COMMANDS = {
    'detcon-generate-masks': 'generate_fh_masks_for_imagenet',
    'detcon-pretrain': 'detcon.main_loop',
    'detcon-linear-eval': 'detcon.linear_eval',
    'detcon-dense-eval': 'detcon.dense_eval',
    'detcon-export': 'detcon.export',
    'detcon-predict': 'detcon.predict',
    'detcon-scenes': 'detcon.scenes',
    'detcon-demo': 'detcon.demo',
}


def _run(command: str) -> None:
  runpy.run_module(COMMANDS[command], run_name='__main__', alter_sys=True)


def generate_masks() -> None:
  """`detcon-generate-masks`: image folders -> TFRecords with masks."""
  _run('detcon-generate-masks')


def pretrain() -> None:
  """`detcon-pretrain`: `python -m detcon.main_loop`."""
  _run('detcon-pretrain')


def linear_eval() -> None:
  """`detcon-linear-eval`: `python -m detcon.linear_eval`."""
  _run('detcon-linear-eval')


def dense_eval() -> None:
  """`detcon-dense-eval`: `python -m detcon.dense_eval`."""
  _run('detcon-dense-eval')


def export() -> None:
  """`detcon-export`: `python -m detcon.export`."""
  _run('detcon-export')


def predict() -> None:
  """`detcon-predict`: `python -m detcon.predict`."""
  _run('detcon-predict')


def scenes() -> None:
  """`detcon-scenes`: `python -m detcon.scenes`."""
  _run('detcon-scenes')


def demo() -> None:
  """`detcon-demo`: `python -m detcon.demo`."""
  _run('detcon-demo')
