#!/usr/bin/env bash
# Sets up when needed, then runs the one-step smoke run and the whole suite.
#
#   bash test.sh                 # everything (what CI runs)
#   bash test.sh -k losses       # extra arguments go to pytest
#
# The smoke run is the original release's test: one DetCon-B step of
# ResNet-50 at 224, batch 4, on mock data. The suite installs a torch +
# torchvision where it can (for the export tests); DETCON_WITH_TORCH=0 skips.
# The suite runs in DETCON_TEST_WORKERS parallel processes (default 2, one
# per core of the development machines; 0 runs it in this process), each
# module whole on one worker, the slowest modules first (tests/conftest.py).
# What a passing session compiled is kept in the venv for the next one
# (docs/testing.md, "One compilation cache").
set -euo pipefail
cd "$(dirname "$0")"
DETCON_WITH_TORCH="${DETCON_WITH_TORCH:-1}" bash setup.sh
# shellcheck disable=SC1091
source "${DETCON_VENV:-/tmp/detcon_venv}/bin/activate"

echo "== lint"
ruff check .
echo "== smoke: python -m detcon.main_loop --is_test"
python -m detcon.main_loop --is_test
echo "== tests"
python -m pytest -n "${DETCON_TEST_WORKERS:-2}" --dist loadfile \
  --no-loadscope-reorder tests "$@"
