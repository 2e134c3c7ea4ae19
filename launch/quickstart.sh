#!/usr/bin/env bash
# The first run: set up, train the default synthetic-world model, evaluate it, draw heat maps.
# Usage: bash launch/quickstart.sh [WORKDIR] [--config.KEY=VALUE ...]
# Training ends with an evaluation of the final state (metrics.json + figures); evaluate any
# checkpoint again later with: python -m denseav_jax.evaluate --config ... --workdir WORKDIR
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source launch/setup_env.sh ''  # No extras (not this script's own arguments).
workdir="${1:-runs/synthetic}"
[ $# -gt 0 ] && shift
mkdir -p "$(dirname "$workdir")"
python -m denseav_jax.train --config configs/synthetic.py --workdir "$workdir" "$@"
echo "Metrics: $workdir/eval/<step>/metrics.json  Figures: $workdir/eval/<step>/*.png  TensorBoard: $workdir/tb"
