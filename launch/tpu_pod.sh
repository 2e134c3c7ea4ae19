#!/usr/bin/env bash
# Trains on a Cloud TPU VM pod slice: copies this checkout to every worker, installs it there
# (jax[tpu]), and runs the same training command on all workers at once
# (--distributed --cluster=tpu: JAX reads the pod's layout from the TPU VM metadata).
#
# Usage: TPU=NAME ZONE=ZONE [PROJECT=P] [CONFIG=configs/denseav.py[:VARIANT]] \
#          bash launch/tpu_pod.sh WORKDIR [--config.KEY=VALUE ...]
#        STOP=1 TPU=NAME ZONE=ZONE bash launch/tpu_pod.sh [WORKDIR]   (graceful stop, see below)
#
# WORKDIR must be one directory that every worker sees at the same absolute path: a shared
# filesystem (Filestore / NFS) or a Cloud Storage bucket mounted with gcsfuse on every
# worker (e.g. /mnt/gcs/runs/x). A path local to each worker gives every worker its own,
# partial checkpoints, and resuming breaks. gs:// URLs are refused (the trainer writes its
# logs and checkpoints through the filesystem).
#
# Environment:
#   TPU, ZONE      the TPU VM's name and zone (required)
#   PROJECT        the Google Cloud project (default: gcloud's configured project)
#   CONFIG         config file[:variant], relative to the repository (default configs/denseav.py)
#   REMOTE_DIR     where the code lives on the workers, relative to the home dir (default
#                  denseav-jax; no '.' or '..' components); its .venv is kept between runs.
#                  Only a folder this script made (it holds .denseav-jax-remote) is cleaned:
#                  an existing non-empty folder without that file is refused
#   SKIP_COPY=1    do not copy the code again; SKIP_INSTALL=1: do not (re)install it
#   DETACH=1       start training in the background on every worker (survives the end of this
#                  script and of its ssh sessions); output in REMOTE_DIR/train.log per worker
#   STOP=1         send SIGTERM to the training started by this script on every worker: all
#                  workers finish the step, save a checkpoint and exit 0. Waits up to
#                  STOP_WAIT seconds (default 600; 0: do not wait) for each trainer to exit and
#                  prints one line per worker, `tpu_pod.sh: stop: HOST: STATE`, STATE one of
#                    saved at step N           exited, and its newest checkpoint is newer
#                    exited at step N          exited; its newest checkpoint (N) is no newer
#                                              than before the stop (or: without a checkpoint)
#                    still running             still alive after STOP_WAIT
#                    gone                      no training of this script was running
#                  (N: the newest step in WORKDIR/checkpoints; WORKDIR defaults to the one the
#                  training was started with, recorded on the worker)
#   SSH_FLAGS      extra flags for every gcloud ssh/scp, e.g. "--internal-ip" or
#                  "--tunnel-through-iap"
#   GCLOUD         the gcloud command (default gcloud)
#   DRY_RUN=1      print the commands (one per line) instead of running them, and exit 0
#
# Resuming: run the same command again (SKIP_COPY=1 SKIP_INSTALL=1 to go straight to training);
# the trainer restores WORKDIR's latest checkpoint. On a TPU maintenance event or preemption
# notice, Orbax's preemption sync point makes all workers save and stop at the same step.
# Without DETACH=1 the training is tied to this script's ssh sessions: run it inside tmux or
# screen, or use DETACH=1, for long runs.
set -euo pipefail

die() { echo "tpu_pod.sh: error: $*" >&2; exit 2; }

[ -n "${TPU:-}" ] || die "TPU is not set: TPU=NAME ZONE=ZONE bash launch/tpu_pod.sh WORKDIR [--config.KEY=VALUE ...]"
[ -n "${ZONE:-}" ] || die "ZONE is not set: TPU=NAME ZONE=ZONE bash launch/tpu_pod.sh WORKDIR [--config.KEY=VALUE ...]"
if [ -z "${STOP:-}" ]; then
  [ $# -ge 1 ] && [ -n "$1" ] ||
    die "WORKDIR missing: TPU=NAME ZONE=ZONE bash launch/tpu_pod.sh WORKDIR [--config.KEY=VALUE ...]"
  workdir="$1"
  shift
else
  workdir="${1:-}"
  stop_wait="${STOP_WAIT:-600}"
  [[ "$stop_wait" =~ ^[0-9]+$ ]] || die "STOP_WAIT=$stop_wait: give whole seconds (0: do not wait)"
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="${CONFIG:-configs/denseav.py}"
remote_dir="${REMOTE_DIR:-denseav-jax}"
gcloud="${GCLOUD:-gcloud}"
dry="${DRY_RUN:-}"
if ! [[ "$remote_dir" =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ ]]; then
  die "REMOTE_DIR=$remote_dir: use a plain path relative to the home directory (letters, digits, _ . / -)"
fi
case "/$remote_dir/" in
  */./*|*/../*) die "REMOTE_DIR=$remote_dir: no '.' or '..' components: name a folder inside the home directory (e.g. denseav-jax)" ;;
esac

[ -n "$dry" ] || command -v "$gcloud" > /dev/null ||
  die "$gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk) or set GCLOUD"
if [ -z "${STOP:-}" ]; then
  case "$config" in
    /*) die "CONFIG=$config: give the config file relative to the repository (the workers get a copy of it)" ;;
  esac
  [ -f "$root/${config%%:*}" ] || die "CONFIG=$config: ${config%%:*} is not a file of this repository ($root)"
fi

# Quotes a word for the shell only where needed.
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
words() {  # words ARG... -> the arguments as one shell command line
  local out="" w
  for w in "$@"; do out+="${out:+ }$(q "$w")"; done
  printf '%s' "$out"
}
run() {  # run CMD ARG...: prints it (DRY_RUN) or runs it
  if [ -n "$dry" ]; then
    words "$@"
    echo
  else
    echo "+ $(words "$@")" >&2
    local rc=0
    "$@" || rc=$?
    ((rc == 0)) || { echo "tpu_pod.sh: error: exit status $rc from: $(words "$@")" >&2; exit "$rc"; }
  fi
}

read -r -a ssh_flags <<< "${SSH_FLAGS:-}"
common=(--zone="$ZONE" --worker=all)
[ -n "${PROJECT:-}" ] && common+=(--project="$PROJECT")
common+=(${ssh_flags[@]+"${ssh_flags[@]}"})
on_all() {  # on_all 'REMOTE COMMAND': runs it on every worker at once
  run "$gcloud" compute tpus tpu-vm ssh "$TPU" "${common[@]}" --command "$1"
}

if [ -n "${STOP:-}" ]; then
  # On each worker: SIGTERM the trainer this script started (train.pid), wait for it to save
  # and exit, and say what it did, reading the newest checkpoint of its workdir. The newest
  # checkpoint before the stop is read on every worker first (one round), so a worker whose
  # trainer saves early cannot make another's "before" the new checkpoint.
  wd='$(cat train.workdir 2>/dev/null)'
  [ -z "$workdir" ] || wd="$(q "$workdir")"
  ckpt="ckpt() { ls \"\$wd/checkpoints\" 2>/dev/null | grep -E '^[0-9]+\$' | sort -n | tail -n 1; }"
  on_all "cd $remote_dir 2>/dev/null || exit 0; wd=$wd; $ckpt; ckpt > stop.before"
  on_all "h=\$(hostname); say() { echo \"tpu_pod.sh: stop: \$h: \$*\"; }; cd $remote_dir 2>/dev/null || { say gone; exit 0; }; wd=$wd; $ckpt; pid=\$(cat train.pid 2>/dev/null); if [ -z \"\$pid\" ] || ! kill -0 \"\$pid\" 2>/dev/null; then say gone; exit 0; fi; before=\$(cat stop.before 2>/dev/null); kill -TERM \"\$pid\"; waited=0; while kill -0 \"\$pid\" 2>/dev/null && [ \$waited -lt $stop_wait ]; do sleep 1; waited=\$((waited + 1)); done; after=\$(ckpt); if kill -0 \"\$pid\" 2>/dev/null; then say \"still running (pid \$pid, \$waited s after SIGTERM)\"; elif [ -z \"\$after\" ]; then say exited without a checkpoint; elif [ \"\$after\" != \"\$before\" ]; then say saved at step \$after; else say exited at step \$after; fi"
  exit 0
fi

case "$workdir" in
  gs://*) die "WORKDIR=$workdir: gs:// URLs are not supported; mount the bucket with gcsfuse on every worker and pass the mounted path" ;;
  /*) ;;
  *) die "WORKDIR=$workdir must be an absolute path on a filesystem every worker mounts (Filestore / NFS / gcsfuse)" ;;
esac

# (a) The code: tracked and untracked-but-not-ignored files of this checkout (no .venv, runs/).
if [ -z "${SKIP_COPY:-}" ]; then
  archive="${TMPDIR:-/tmp}/denseav-jax-$$.tar.gz"
  if [ -n "$dry" ]; then
    echo "git -C $(q "$root") ls-files -z --cached --others --exclude-standard | tar -czf $(q "$archive") -C $(q "$root") --null -T -"
  else
    trap 'rm -f "$archive"' EXIT
    if git -C "$root" rev-parse --is-inside-work-tree > /dev/null 2>&1; then
      # Files deleted in the work tree are still listed by ls-files: keep existing ones only.
      (cd "$root" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar -czf "$archive" --null -T -)
    else
      tar -czf "$archive" -C "$root" --exclude=./.venv --exclude=./runs --exclude=./.git \
        --exclude='__pycache__' .
    fi
    echo "tpu_pod.sh: code archive $(du -h "$archive" | cut -f1)" >&2
  fi
  run "$gcloud" compute tpus tpu-vm scp "$archive" "$TPU:denseav-jax-code.tar.gz" "${common[@]}"
  # Replace the code (not .venv) so files deleted here do not linger there; only inside a
  # folder this script made (it carries $marker): a non-empty folder without it is refused.
  marker=.denseav-jax-remote
  on_all "set -e; mkdir -p $remote_dir && cd $remote_dir && if [ -n \"\$(ls -A)\" ] && [ ! -f $marker ]; then echo \"\$(hostname): error: ~/$remote_dir is not empty and was not made by tpu_pod.sh (no $marker): choose another REMOTE_DIR\" >&2; exit 1; fi && touch $marker && find . -mindepth 1 -maxdepth 1 ! -name $marker ! -name .venv ! -name runs ! -name train.log ! -name train.pid ! -name train.workdir ! -name stop.before -exec rm -rf {} + && tar -xzf ~/denseav-jax-code.tar.gz && rm ~/denseav-jax-code.tar.gz"
fi

# (b) The environment: .venv with the package, jax[tpu] and gcsfs (setup.cfg's tpu and gcs
# extras: a gs:// workdir needs the latter).
if [ -z "${SKIP_INSTALL:-}" ]; then
  on_all "set -e; cd $remote_dir; py=\$(command -v python3.11 || command -v python3); \$py -c \"import sys; sys.exit(sys.version_info < (3, 11))\" || { echo \"\$(hostname): error: denseav-jax needs Python >= 3.11 (found \$(\$py --version)): install python3.11 and python3.11-venv\" >&2; exit 1; }; bash launch/setup_env.sh tpu,gcs"
fi

# (c) Training: the same command on every worker.
train=(python -m denseav_jax.train --config "$config" --workdir "$workdir" --distributed
       --cluster=tpu "$@")
if [ -n "${DETACH:-}" ]; then
  on_all "cd $remote_dir && source .venv/bin/activate && printf '%s\\n' $(q "$workdir") > train.workdir && { setsid nohup $(words "${train[@]}") > train.log 2>&1 < /dev/null & echo \$! > train.pid; } && echo \"\$(hostname): training in the background, log ~/$remote_dir/train.log\""
  [ -n "$dry" ] || echo "tpu_pod.sh: follow worker 0: $gcloud compute tpus tpu-vm ssh $TPU --zone=$ZONE --worker=0 --command='tail -f $remote_dir/train.log'" >&2
else
  on_all "cd $remote_dir && source .venv/bin/activate && printf '%s\\n' $(q "$workdir") > train.workdir && echo \$\$ > train.pid && exec $(words "${train[@]}")"
fi
