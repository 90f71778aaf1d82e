#!/usr/bin/env bash
# Installs the test dependencies, then runs the static checks (ruff, mypy) and the whole test suite (unit,
# integration, conformance suites) in the set-up's virtual environment, as if activated: the tests start the
# gateway with the interpreter that runs them, and the conformance suites (`python run.py`) and demo upstreams
# are found on PATH in .venv/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export VIRTUAL_ENV="$PWD/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
if [ $# -eq 0 ]; then
  # The whole run starts with the static checks (a given test path runs only those tests).
  echo "ruff check, ruff format --check, mypy"
  ruff check --quiet .
  ruff format --check --quiet .
  mypy
fi
exec "$VIRTUAL_ENV/bin/python" -m pytest "$@"
