#!/usr/bin/env bash
# Creates (once) the project's virtual environment at .venv and installs the package into it.
# Usage: source launch/setup_env.sh EXTRAS   e.g. test, or '' for none (a script that sources
# it must pass the argument: a sourced file sees the caller's own arguments otherwise)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
fresh=
if [ ! -x "$root/.venv/bin/python" ]; then
  fresh=1
  python3.11 -m venv "$root/.venv" 2>/dev/null || python3 -m venv "$root/.venv"
fi
# shellcheck disable=SC1091
source "$root/.venv/bin/activate"
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
if [ -n "$fresh" ]; then
  # A new environment: pip would byte-compile every module it installs on one core (torch,
  # transformers, Gradio: ~40 s); compileall does it on every core afterwards (~28 s on 2
  # cores). The .pyc files are needed: where PYTHONDONTWRITEBYTECODE is set, Python would
  # compile the modules again at every start.
  python -m pip install -q --disable-pip-version-check --no-compile -e "$spec"
  python -m compileall -q -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    >/dev/null || true
else
  python -m pip install -q --disable-pip-version-check -e "$spec"
fi
set +euo pipefail
