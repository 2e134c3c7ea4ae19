#!/usr/bin/env bash
# Runs N cooperating JAX processes on this machine, the way a multi-host pod job runs: each
# process feeds its slice of every global batch, the contrastive matrix spans the global
# batch, and checkpoints hold one iterator state per process.
#
# Usage: N=2 DEVICES=4 [CONFIG=...] [PORT=...] [PLATFORM=cpu|gpu] [DRY_RUN=1] \
#          bash launch/local_multiprocess.sh WORKDIR [--config.KEY=VALUE ...]
#
#   N         processes (default 2), started with --distributed --cluster=explicit
#             --coordinator_address=localhost:PORT --num_processes=N --process_id=0..N-1
#   DEVICES   devices per process (default 4): fake CPU devices (PLATFORM=cpu, the default;
#             XLA_FLAGS' other flags are passed on),
#             or GPUs (PLATFORM=gpu: process i gets CUDA_VISIBLE_DEVICES = the i-th slice of
#             DEVICES GPUs, out of CUDA_VISIBLE_DEVICES if set, else out of all GPUs)
#   CONFIG    config file[:variant], relative to the repository (default
#             configs/synthetic.py:runlocal); a relative WORKDIR is relative to the current dir
#   PORT      coordinator port on localhost (default: random in 20000-39999)
#   MODULE    the program each process runs: denseav_jax.train (default) or
#             denseav_jax.evaluate (sharded evaluation of WORKDIR's checkpoint; further
#             flags such as --checkpoint / --evals go after WORKDIR)
#   DRY_RUN=1 only prints the commands (one per line, with their env assignments), exits 0
#   KILL_AFTER seconds from a failed process to SIGKILL of those still running (default 30)
#   GRACE     seconds from a forwarded signal to SIGKILL of those still running (default 600)
#
# Each process writes WORKDIR/process_I.log; process 0's log (minus absl I/W lines) is printed
# at the end. Running the same command again resumes from WORKDIR's latest checkpoint.
# If a process exits non-zero the others are stopped (whole process groups) and the launcher
# exits with that status. SIGTERM or SIGINT (Ctrl-C) to the launcher is passed on as SIGTERM
# to every process: they finish the step, save a checkpoint and exit 0; a second signal
# kills them. Needs bash >= 5.1.
set -euo pipefail

die() { echo "local_multiprocess.sh: error: $*" >&2; exit 2; }

if ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
  die "needs bash >= 5.1 (this is $BASH_VERSION)"
fi
[ $# -ge 1 ] && [ -n "$1" ] ||
  die "WORKDIR missing. Usage: N=2 DEVICES=4 bash launch/local_multiprocess.sh WORKDIR [--config.KEY=VALUE ...]"
workdir="$1"
shift
case "$workdir" in
  gs://*) die "WORKDIR=$workdir: local runs need a local directory (logs go there)" ;;
  /*) ;;
  *) workdir="$PWD/$workdir" ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

n="${N:-2}"
devices="${DEVICES:-4}"
platform="${PLATFORM:-cpu}"
config="${CONFIG:-configs/synthetic.py:runlocal}"
module="${MODULE:-denseav_jax.train}"
case "$module" in
  denseav_jax.train | denseav_jax.evaluate) ;;
  *) die "MODULE=$module: use denseav_jax.train or denseav_jax.evaluate" ;;
esac
port="${PORT:-$((20000 + RANDOM % 20000))}"
kill_after="${KILL_AFTER:-30}"
grace="${GRACE:-600}"
[[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N=$n: must be a positive integer"
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || die "DEVICES=$devices: must be a positive integer"
if ! [[ "$port" =~ ^[1-9][0-9]*$ ]] || ((port > 65535)); then die "PORT=$port: must be a port number"; fi
[[ "$kill_after" =~ ^[0-9]+$ ]] || die "KILL_AFTER=$kill_after: must be whole seconds"
[[ "$grace" =~ ^[0-9]+$ ]] || die "GRACE=$grace: must be whole seconds"

# Quotes a word for the shell only where needed (readable dry-run lines).
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Per-process environment.
gpus=()
case "$platform" in
  cpu) ;;
  gpu)
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
      IFS=',' read -r -a gpus <<< "$CUDA_VISIBLE_DEVICES"
    elif [ -z "${DRY_RUN:-}" ] && command -v nvidia-smi > /dev/null; then
      count="$(nvidia-smi -L | grep -c '^GPU' || true)"
      for ((g = 0; g < count; g++)); do gpus+=("$g"); done
    else
      for ((g = 0; g < n * devices; g++)); do gpus+=("$g"); done
    fi
    ((${#gpus[@]} >= n * devices)) ||
      die "PLATFORM=gpu: N=$n x DEVICES=$devices needs $((n * devices)) GPUs, only ${#gpus[@]} visible (${gpus[*]:-none})"
    ;;
  *) die "PLATFORM=$platform: use cpu or gpu" ;;
esac

env_of() {  # env_of I -> the assignments for process I, one per line
  if [ "$platform" = cpu ]; then
    # The caller's other XLA flags stay (e.g. --xla_cpu_max_isa=AVX2); the count is DEVICES.
    local kept=() flag
    for flag in ${XLA_FLAGS:-}; do
      [[ "$flag" == --xla_force_host_platform_device_count=* ]] || kept+=("$flag")
    done
    echo "XLA_FLAGS=${kept[*]:+${kept[*]} }--xla_force_host_platform_device_count=$devices"
    echo "JAX_PLATFORMS=cpu"
  else
    local slice=("${gpus[@]:$(($1 * devices)):$devices}")
    local IFS=','
    echo "CUDA_VISIBLE_DEVICES=${slice[*]}"
    echo "JAX_PLATFORMS=cuda"
  fi
}

cmd_of() {  # cmd_of I [OVERRIDES] -> the program's argv for process I, one word per line
  local i="$1"
  shift
  printf '%s\n' python -m "$module" --config "$config" --workdir "$workdir" \
    --distributed --cluster=explicit --coordinator_address="localhost:$port" \
    --num_processes="$n" --process_id="$i" "$@"
}

if [ -n "${DRY_RUN:-}" ]; then
  for ((i = 0; i < n; i++)); do
    mapfile -t envs < <(env_of "$i")
    mapfile -t cmd < <(cmd_of "$i" "$@")
    line=""
    for w in "${envs[@]}" "${cmd[@]}"; do line+="$(q "$w") "; done
    echo "${line}> $(q "$workdir/process_$i.log") 2>&1"
  done
  exit 0
fi

cd "$root"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  # shellcheck disable=SC1091
  source launch/setup_env.sh ''  # No extras (not this script's own arguments).
  set -euo pipefail  # setup_env.sh turns these off for interactive shells.
fi
mkdir -p "$workdir"

declare -A index_of=()  # pid -> process index, for the processes still running
signals=0
deadline=0  # when > 0: SIGKILL what still runs at this time (bash's $SECONDS)

set_deadline() {  # set_deadline SECONDS: SIGKILL what still runs then (the earliest deadline wins)
  local d=$((SECONDS + $1))
  if ((deadline == 0 || d < deadline)); then deadline=$d; fi
}

signal_all() {  # signal_all SIG: to every running process group
  local pid
  for pid in "${!index_of[@]}"; do kill "-$1" -- "-$pid" 2> /dev/null || true; done
}

# shellcheck disable=SC2329  # Called by the traps below.
on_signal() {
  signals=$((signals + 1))
  if ((signals == 1)); then
    echo "local_multiprocess.sh: $1 received: asking the $n processes to save and stop (SIGTERM)" >&2
    signal_all TERM
    set_deadline "$grace"
  else
    echo "local_multiprocess.sh: $1 received again: killing the processes" >&2
    signal_all KILL
  fi
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT
trap 'on_signal SIGHUP' HUP
trap 'signal_all KILL' EXIT  # Never leave processes behind (e.g. the launcher failing).

for ((i = 0; i < n; i++)); do
  mapfile -t envs < <(env_of "$i")
  mapfile -t cmd < <(cmd_of "$i" "$@")
  # Job control on: the process gets its own process group (pgid = its pid), so stopping it
  # also stops whatever it started, and Ctrl-C reaches only the launcher, which passes it on.
  set -m
  env "${envs[@]}" "${cmd[@]}" < /dev/null > "$workdir/process_$i.log" 2>&1 &
  set +m
  index_of[$!]=$i
done
((signals == 0)) || signal_all TERM  # A signal came while they were being started.

status=0
failed=""
ticker=""
while ((${#index_of[@]} > 0)); do
  if ((deadline > 0)); then
    if ((SECONDS >= deadline)); then
      echo "local_multiprocess.sh: processes still running past the deadline: killing them" >&2
      signal_all KILL
      deadline=0
    elif [ -z "$ticker" ]; then
      sleep 1 &  # Wakes the wait below once a second to check the deadline.
      ticker=$!
    fi
  fi
  done_pid=""
  rc=0
  # (2> /dev/null: bash's own "Killed" notices; the status is reported below.)
  wait -n -p done_pid "${!index_of[@]}" ${ticker:+"$ticker"} 2> /dev/null || rc=$?
  if [ -z "${done_pid:-}" ]; then
    if ((rc == 127)); then  # Bash lost track of them (should not happen): collect them.
      for pid in "${!index_of[@]}"; do
        rc=0
        wait "$pid" 2> /dev/null || rc=$?
        ((status != 0 || rc == 0)) || status=$rc
        unset "index_of[$pid]"
      done
    fi
    continue  # Else a trapped signal interrupted the wait.
  fi
  if [ "$done_pid" = "$ticker" ]; then
    ticker=""
    continue
  fi
  i="${index_of[$done_pid]}"
  unset "index_of[$done_pid]"
  if ((rc != 0)) && [ -z "$failed" ]; then
    status=$rc
    failed=$i
    if ((${#index_of[@]} > 0)); then
      echo "local_multiprocess.sh: process $i exited with status $rc: stopping the others" >&2
      signal_all TERM
      set_deadline "$kill_after"
    fi
  fi
done
trap - EXIT
[ -n "$ticker" ] && { kill "$ticker" 2> /dev/null || true; }

grep -v '^[IW][0-9]' "$workdir/process_0.log" || true
if [ -n "$failed" ]; then
  echo "local_multiprocess.sh: process $failed failed (exit $status); its last lines:" >&2
  tail -n 20 "$workdir/process_$failed.log" >&2 || true
  echo "local_multiprocess.sh: all logs: $workdir/process_*.log" >&2
fi
exit "$status"
