#!/usr/bin/env bash
# Sets up the environment with the test extras and runs the test suite on 8 fake CPU devices.
# Usage: bash launch/test.sh [PYTEST ARGS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source launch/setup_env.sh test
python -m pytest tests "$@"
