#!/usr/bin/env bash
# Creates (once) the project's virtual environment at .venv and installs the package into it.
# Usage: source launch/setup_env.sh EXTRAS   e.g. test, or '' for none (a script that sources
# it must pass the argument: a sourced file sees the caller's own arguments otherwise)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
if [ ! -x "$root/.venv/bin/python" ]; then
  python3.11 -m venv "$root/.venv" 2>/dev/null || python3 -m venv "$root/.venv"
fi
# shellcheck disable=SC1091
source "$root/.venv/bin/activate"
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
# --no-compile: pip would byte-compile every module of every package (torch, transformers,
# Gradio: half of a fresh install's time, 81 -> 43 s measured); Python compiles the modules
# a program imports on first import instead.
python -m pip install -q --disable-pip-version-check --no-compile -e "$spec"
set +euo pipefail
