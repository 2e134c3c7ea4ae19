"""Multi-host start-up: `jax.distributed.initialize` from flags or the environment
(docs/training.md#multi-host).

`--distributed` turns it on; `--cluster` says where the process count, the process id and
the coordinator come from:

  auto      explicit values if all three are given, else SLURM if its variables are set,
            else JAX's own detection (Cloud TPU VMs, Open MPI).
  explicit  --coordinator_address / --num_processes / --process_id, or the environment
            variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
            (launch/local_multiprocess.sh); JAX's own cluster detection is then off.
  slurm     SLURM_NTASKS, SLURM_PROCID, the first host of SLURM_STEP_NODELIST (port
            JAX_COORDINATOR_PORT, else derived from SLURM_JOB_ID). One task per GPU
            (`--ntasks-per-node=GPUS`) gives each process its GPU (SLURM_LOCALID); one task
            per node (`--ntasks-per-node=1`) gives each process every GPU of its node;
            GPUs bound per task by SLURM (`--gpus-per-task`) are all used.
  tpu       JAX's Cloud TPU detection (every worker of a TPU VM pod runs the same command:
            launch/tpu_pod.sh).

`resolve` is a pure function of the flag values and the environment (tested with fake
SLURM environments); `initialize` calls JAX with what it returns.
"""

import os
import re
from typing import Any, Mapping

CLUSTERS = ('auto', 'explicit', 'slurm', 'tpu')


def define_flags() -> None:
  """The multi-host flags (idempotent; entry points call it, importing does not)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if 'distributed' in flags.FLAGS:
    return
  flags.DEFINE_bool('distributed', False,
                    'Call jax.distributed.initialize() (multi-process / multi-host runs).')
  flags.DEFINE_enum('cluster', 'auto', list(CLUSTERS),
                    'Where the process layout comes from: auto | explicit | slurm | tpu.')
  flags.DEFINE_string('coordinator_address', None,
                      'host:port of process 0 (explicit; env JAX_COORDINATOR_ADDRESS).')
  flags.DEFINE_integer('num_processes', None, 'Number of processes (env JAX_NUM_PROCESSES).')
  flags.DEFINE_integer('process_id', None, "This process's index (env JAX_PROCESS_ID).")
  flags.DEFINE_list('local_device_ids', None,
                    'Local device ids this process uses (default: all, or the SLURM task\'s '
                    'GPU with one task per GPU).')


def _int(environ: Mapping[str, str], key: str) -> int | None:
  value = environ.get(key)
  if value in (None, ''):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'environment variable {key}={value!r} is not an integer') from None


def first_slurm_host(node_list: str) -> str:
  """The first host of a SLURM node list.

  'n[001-004,9],gpu2' -> 'n001', 'gpu9,gpu1' -> 'gpu9', 'rack[2-3]-node[07-08]' -> 'rack2-node07'.
  """
  text = node_list.strip()
  depth, end = 0, len(text)
  for i, ch in enumerate(text):  # The first comma outside brackets ends the first entry.
    if ch == '[':
      depth += 1
    elif ch == ']':
      depth -= 1
    elif ch == ',' and depth == 0:
      end = i
      break
  first = text[:end]
  # Each [range,list] stands for its first value: '001-004,9' -> '001'.
  host = re.sub(r'\[([^\[\]]*)\]',
                lambda m: re.split(r'[,\-]', m.group(1).strip(), maxsplit=1)[0], first)
  if not host or re.search(r'[\[\]\s]', host):
    raise ValueError(f'cannot read a host from SLURM_STEP_NODELIST={node_list!r}')
  return host


def _slurm_tasks_per_node(environ: Mapping[str, str]) -> int | None:
  value = (environ.get('SLURM_STEP_TASKS_PER_NODE') or environ.get('SLURM_NTASKS_PER_NODE')
           or environ.get('SLURM_TASKS_PER_NODE'))
  if value:
    m = re.match(r'(\d+)', value)  # '4' or '4(x2)' or '4,2'
    if m:
      return int(m.group(1))
  tasks = _int(environ, 'SLURM_NTASKS')
  nodes = (_int(environ, 'SLURM_STEP_NUM_NODES') or _int(environ, 'SLURM_NNODES')
           or _int(environ, 'SLURM_JOB_NUM_NODES'))
  if tasks and nodes:
    return max(tasks // nodes, 1)
  return None


def _slurm_present(environ: Mapping[str, str]) -> bool:
  return all(k in environ for k in ('SLURM_JOB_ID', 'SLURM_NTASKS', 'SLURM_PROCID'))


def _visible_gpus(environ: Mapping[str, str]) -> int | None:
  """How many GPUs CUDA_VISIBLE_DEVICES leaves this process (None: not set)."""
  value = environ.get('CUDA_VISIBLE_DEVICES')
  if value is None:
    return None
  return len([d for d in value.split(',') if d.strip()])


def _device_ids(local_device_ids) -> list[int] | None:
  if not local_device_ids:
    return None
  if isinstance(local_device_ids, (int, str)):
    local_device_ids = str(local_device_ids).split(',')
  try:
    return [int(i) for i in local_device_ids]
  except (TypeError, ValueError):
    raise ValueError(f'--local_device_ids={local_device_ids!r}: use integers, e.g. '
                     '--local_device_ids=0,1') from None


def _check_range(process_id: int | None, num_processes: int | None) -> None:
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'--num_processes={num_processes} must be at least 1')
  if process_id is not None and num_processes is not None and not (
      0 <= process_id < num_processes):
    raise ValueError(f'--process_id={process_id} is not in [0, --num_processes='
                     f'{num_processes})')


def resolve(*, cluster: str = 'auto', coordinator_address: str | None = None,
            num_processes: int | None = None, process_id: int | None = None,
            local_device_ids=None, environ: Mapping[str, str] | None = None
            ) -> tuple[str, dict[str, Any]]:
  """(how, kwargs for jax.distributed.initialize). ValueError when the layout is unclear."""
  environ = os.environ if environ is None else environ
  if cluster not in CLUSTERS:
    raise ValueError(f'--cluster={cluster!r}: use one of {", ".join(CLUSTERS)}')
  coordinator_address = coordinator_address or environ.get('JAX_COORDINATOR_ADDRESS')
  num_processes = num_processes if num_processes is not None else _int(
      environ, 'JAX_NUM_PROCESSES')
  process_id = process_id if process_id is not None else _int(environ, 'JAX_PROCESS_ID')
  ids = _device_ids(local_device_ids)
  explicit = (coordinator_address, num_processes, process_id)
  if cluster == 'auto':
    if None not in explicit:
      cluster = 'explicit'
    elif _slurm_present(environ):
      cluster = 'slurm'
    else:
      cluster = 'tpu'
  if cluster == 'explicit':
    missing = [n for n, v in zip(('--coordinator_address', '--num_processes',
                                  '--process_id'), explicit) if v is None]
    if missing:
      raise ValueError(f'--distributed --cluster=explicit needs {", ".join(missing)} (or '
                       'JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)')
    _check_range(process_id, num_processes)
    kw = dict(coordinator_address=coordinator_address, num_processes=num_processes,
              process_id=process_id, local_device_ids=ids)
    if ids is None:
      # Every value is given: keep JAX's SLURM / Open MPI detection (say, a local
      # multi-process run inside a SLURM allocation) from narrowing this process to one GPU.
      kw['cluster_detection_method'] = 'deactivate'
    return f'explicit: process {process_id} of {num_processes}', _drop_none(kw)
  if cluster == 'slurm':
    if not _slurm_present(environ):
      raise ValueError('--cluster=slurm but SLURM_JOB_ID / SLURM_NTASKS / SLURM_PROCID are '
                       'not set: start the job with srun (launch/slurm.sbatch)')
    n = num_processes if num_processes is not None else _int(environ, 'SLURM_NTASKS')
    p = process_id if process_id is not None else _int(environ, 'SLURM_PROCID')
    _check_range(p, n)
    if not coordinator_address:
      nodes = environ.get('SLURM_STEP_NODELIST') or environ.get('SLURM_JOB_NODELIST')
      if not nodes:
        raise ValueError('SLURM_STEP_NODELIST is not set: pass --coordinator_address')
      port = environ.get('JAX_COORDINATOR_PORT')
      if not port:
        job = _int(environ, 'SLURM_JOB_ID')
        if job is None:
          raise ValueError('SLURM_JOB_ID is empty: set JAX_COORDINATOR_PORT')
        port = str(job % 4096 + 61440)  # JAX's own choice: the top 4096 ports.
      coordinator_address = f'{first_slurm_host(nodes)}:{port}'
    per_node = _slurm_tasks_per_node(environ)
    visible = _visible_gpus(environ)
    kw = dict(coordinator_address=coordinator_address, num_processes=n, process_id=p)
    if ids is not None:
      kw['local_device_ids'] = ids
      how = 'given devices'
    elif per_node == 1:
      # One task per node: this process drives every GPU of its node. Stop JAX from
      # narrowing it to GPU SLURM_LOCALID (= 0) by its own SLURM detection.
      kw['cluster_detection_method'] = 'deactivate'
      how = 'one task per node, all its GPUs'
    elif visible is not None and per_node is not None and visible < per_node:
      # SLURM bound GPUs to tasks (--gpus-per-task, --gpu-bind): CUDA_VISIBLE_DEVICES holds
      # only this task's GPUs, so SLURM_LOCALID is no index into them; use them all.
      kw['cluster_detection_method'] = 'deactivate'
      how = f'GPUs bound per task ({visible} visible)'
    else:
      local = _int(environ, 'SLURM_LOCALID')
      if local is None:
        raise ValueError('SLURM_LOCALID is not set: start one task per GPU with srun')
      kw['local_device_ids'] = [local]
      how = f'one task per GPU (local GPU {local})'
    return f'slurm: process {p} of {n}, {how}', kw
  # tpu: JAX reads the TPU VM's metadata (and Open MPI's variables) itself.
  _check_range(process_id, num_processes)
  kw = dict(coordinator_address=coordinator_address, num_processes=num_processes,
            process_id=process_id, local_device_ids=ids)
  return 'auto-detected (Cloud TPU / Open MPI)', _drop_none(kw)


def _drop_none(kw: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in kw.items() if v is not None}


def initialize(**resolve_kwargs) -> str:
  """Resolves the layout and starts jax.distributed; returns how it was found."""
  import jax  # pylint: disable=g-import-not-at-top
  how, kw = resolve(**resolve_kwargs)
  try:
    jax.distributed.initialize(**kw)
  except (ValueError, RuntimeError) as e:
    text = ' '.join(str(e).split())[:300]
    raise ValueError(f'jax.distributed.initialize failed ({how}): {text}. Pass '
                     '--cluster=explicit with --coordinator_address, --num_processes and '
                     '--process_id if the cluster was not detected') from None
  return how


def initialize_from_flags() -> None:
  """Initializes jax.distributed when --distributed is set (entry points call this)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  if 'distributed' not in f or not f.distributed:
    return
  how = initialize(cluster=f.cluster, coordinator_address=f.coordinator_address,
                   num_processes=f.num_processes, process_id=f.process_id,
                   local_device_ids=f.local_device_ids)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    print(f'jax.distributed: {jax.process_count()} processes, {jax.device_count()} devices '
          f'({how})', flush=True)
