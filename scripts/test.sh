#!/usr/bin/env bash
# Installs the test dependencies, then runs the whole test suite (unit, integration, conformance suites) in the
# set-up's virtual environment, as if activated: the tests start the gateway with the interpreter that runs them,
# and the conformance suites (`python run.py`) and demo upstreams are found on PATH in .venv/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export VIRTUAL_ENV="$PWD/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
exec "$VIRTUAL_ENV/bin/python" -m pytest "$@"
