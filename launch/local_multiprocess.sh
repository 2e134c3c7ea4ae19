#!/usr/bin/env bash
# Runs N cooperating JAX processes on this machine (CPU, DEVICES fake devices each), the way a
# multi-host pod job runs: each process feeds its slice of every global batch, the contrastive
# matrix spans the global batch, and checkpoints hold one iterator state per process.
# Usage: N=2 DEVICES=4 bash launch/local_multiprocess.sh WORKDIR [--config.KEY=VALUE ...]
# (CONFIG=configs/synthetic.py:runlocal by default).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[ -n "${VIRTUAL_ENV:-}" ] || source launch/setup_env.sh
workdir="${1:?usage: local_multiprocess.sh WORKDIR [overrides]}"
shift
n="${N:-2}"
devices="${DEVICES:-4}"
config="${CONFIG:-configs/synthetic.py:runlocal}"
port="${PORT:-$((20000 + RANDOM % 20000))}"
mkdir -p "$workdir"
pids=()
for ((i = 0; i < n; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu \
    python -m denseav_jax.train --config "$config" --workdir "$workdir" --distributed \
    --coordinator_address="localhost:$port" --num_processes="$n" --process_id="$i" "$@" \
    > "$workdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
cat "$workdir/process_0.log" | grep -v '^[IWE][0-9]' || true
[ $status -eq 0 ] || { echo "a process failed (exit $status): see $workdir/process_*.log" >&2; exit $status; }
