"""The sharded evaluation steps compiled ahead of time for a TPU slice (`python -m
denseav_jax.compile --evals`, docs/pods.md): both towers on a global evaluation batch and
each retrieval evaluator's N x N score matrix, built by the evaluators' own code
(evals/embed.SetRunner.embed_step, evals/retrieval.score_fn) over abstract inputs."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from denseav_jax.evals import embed
from denseav_jax.evals import registry
from denseav_jax.evals import retrieval
from denseav_jax.models import denseav
from denseav_jax.models import params as params_lib
from denseav_jax.parallel import sharding
from denseav_jax.parallel import topologies
from denseav_jax.trainer import mfu as mfu_lib
from denseav_jax.trainer import plan as plan_lib


def _memory(compiled, hbm_bytes: int) -> dict[str, Any]:
  mem = compiled.memory_analysis()
  total = (int(mem.argument_size_in_bytes) + int(mem.output_size_in_bytes)
           - int(mem.alias_size_in_bytes) + int(mem.temp_size_in_bytes)
           + int(mem.generated_code_size_in_bytes))
  return dict(argument_bytes=int(mem.argument_size_in_bytes),
              output_bytes=int(mem.output_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
              code_bytes=int(mem.generated_code_size_in_bytes), total_bytes=total,
              hbm_bytes=hbm_bytes, fits=total <= hbm_bytes,
              flops=float(mfu_lib.cost_analysis(compiled).get('flops', 0.0)))


def plan_evals(config, topology: str, num_slices: int = 1, log=print) -> list[dict[str, Any]]:
  """The sharded evaluation steps compiled for the slice: both towers on a global
  evaluation batch (config.eval_batch_size), and each retrieval evaluator's N x N score
  matrix from its features. Per chip: memory against HBM, XLA's FLOPs."""
  config = plan_lib.with_slices(config, num_slices, log)
  topo = topologies.parse(topology)
  mesh = plan_lib.mesh_for(config, topologies.devices(topo, num_slices))
  model = denseav.build_model(config)
  params = params_lib.abstract_params(config, model, mesh)
  runner = embed.SetRunner(config, model, mesh, jax.tree.map(lambda x: x.sharding, params))
  dp = sharding.data_parallel_size(mesh)

  def inputs(rows: int):
    return {k: jax.ShapeDtypeStruct((rows,) + shape, dtype, sharding=runner.data)
            for k, (shape, dtype) in runner.input_spec.items()}

  out = []
  rows = runner.global_batch(config.eval_batch_size)
  log(f'compiling the evaluation towers at global batch {rows} ...')
  t0 = time.time()
  compiled = runner.embed_step().lower(params, inputs(rows)).compile()
  out.append(dict(step='towers', batch_size=rows, compile_s=time.time() - t0,
                  **_memory(compiled, topo.chip.hbm_bytes)))
  for name, entry in registry.entries(config).items():
    if entry['type'] != 'retrieval':
      continue
    n = int(entry['num_examples'])
    rows = -(-n // dp) * dp
    shapes = jax.eval_shape(lambda p, b: embed.towers(model, p, b['image'], b['audio'],
                                                      b['audio_len']), params, inputs(rows))
    feats = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=runner.data)
             for k, v in shapes.items()}
    valid = jax.ShapeDtypeStruct((rows,), np.bool_, sharding=runner.repl)
    block = tuple(entry.get('block') or config.eval_retrieval_block)
    log(f'compiling {name}: the {n} x {n} score matrix ...')
    t0 = time.time()
    compiled = retrieval.score_fn(config, model, mesh, runner, block).lower(
        params, feats, valid).compile()
    out.append(dict(step=f'{name} scores', batch_size=n, compile_s=time.time() - t0,
                    **_memory(compiled, topo.chip.hbm_bytes)))
  return out


def format_evals(evals: list[dict[str, Any]]) -> str:
  lines = ['evaluation, per chip:']
  for e in evals:
    verdict = 'fits' if e['fits'] else 'DOES NOT FIT'
    lines.append(f'  {e["step"]} ({e["batch_size"]}): arguments '
                 f'{plan_lib.size(e["argument_bytes"])}, temporaries '
                 f'{plan_lib.size(e["temp_bytes"])}, code {plan_lib.size(e["code_bytes"])}, '
                 f'total {plan_lib.size(e["total_bytes"])} of {plan_lib.gib(e["hbm_bytes"])} GiB '
                 f'({verdict}); {e["flops"]:.3e} FLOPs (XLA); compiled in '
                 f'{e["compile_s"]:.1f} s')
  return '\n'.join(lines)
