#!/usr/bin/env bash
# The first run: set up, train the default synthetic-world model, evaluate, draw heat maps.
# Usage: bash launch/quickstart.sh [WORKDIR] [--config.KEY=VALUE ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source launch/setup_env.sh
workdir="${1:-runs/synthetic}"
[ $# -gt 0 ] && shift
mkdir -p "$(dirname "$workdir")"
python -m denseav_jax.train --config configs/synthetic.py --workdir "$workdir" "$@"
python -m denseav_jax.evaluate --config configs/synthetic.py --workdir "$workdir" "$@"
echo "Metrics: $workdir/eval/*/metrics.json   Figures: $workdir/eval/*/*.png   TensorBoard: $workdir/tb"
