#!/usr/bin/env bash
# Installs the test dependencies, then runs the whole test suite (unit, integration, conformance suites).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
python3 -m pytest "$@"
