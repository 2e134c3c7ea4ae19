#!/usr/bin/env bash
# Sets up the environment with the test extras and runs the test suite on 8 fake CPU devices,
# in two pytest-xdist workers (a 2-core machine: most tests compile on one core); each worker
# runs whole files, the slowest first (tests/conftest.py; docs/tests.md#running).
# Usage: bash launch/test.sh [PYTEST ARGS]   (e.g. -m "not slow", or -n 4 on more cores)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source launch/setup_env.sh test
python -m pytest -n 2 --dist loadfile --no-loadscope-reorder tests "$@"
