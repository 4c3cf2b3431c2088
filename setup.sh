#!/usr/bin/env bash
# Creates (or updates) the virtualenv and installs the pinned dependencies.
#
#   bash setup.sh                        # venv in /tmp/detcon_venv, as the original
#   DETCON_VENV=~/venvs/detcon bash setup.sh
#   DETCON_WITH_TORCH=1 bash setup.sh    # also a CPU torch + torchvision (export tests)
#
# Idempotent: a venv whose installed requirements match requirements.txt is left
# alone. Enter it afterwards with `source /tmp/detcon_venv/bin/activate`.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DETCON_VENV:-/tmp/detcon_venv}"
STAMP="$VENV/.detcon-requirements"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup.sh: creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
want="$(cat requirements.txt)"
if [[ ! -f "$STAMP" ]] || [[ "$(cat "$STAMP")" != "$want" ]]; then
  echo "setup.sh: installing requirements.txt into $VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet -r requirements.txt
  echo "$want" > "$STAMP"
fi
if [[ "${DETCON_WITH_TORCH:-0}" == "1" ]] && ! "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
  echo "setup.sh: installing torch + torchvision (CPU) for the export tests"
  if "$VENV/bin/pip" install --quiet -r requirements-torch.txt; then
    # torch imports triton when present; triton's native library segfaults
    # once TensorFlow is loaded in the same process, and CPU use needs none.
    "$VENV/bin/pip" uninstall --quiet --yes triton || true
  else
    echo "setup.sh: torch could not be installed here; torch-based tests will be skipped"
  fi
fi
echo "setup.sh: ready. Activate with: source $VENV/bin/activate"
