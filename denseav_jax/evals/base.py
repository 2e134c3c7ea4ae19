"""What every evaluator has: its name, its config entry and the shared context."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Context:
  """Shared by the evaluators of one suite: the model, the mesh and the set runner."""
  config: Any
  model: Any
  mesh: Any
  runner: Any  # embed.SetRunner
  sets: dict = dataclasses.field(default_factory=dict)

  def eval_set(self, dataset: str, num_examples: int = 0, pairs: bool = False):
    """The evaluation set (built once: indexing a file-backed set reads its metadata)."""
    from denseav_jax.evals import sets  # pylint: disable=g-import-not-at-top
    key = (dataset, int(num_examples or 0), pairs)
    if key not in self.sets:
      self.sets[key] = sets.EvalSet(self.config, dataset, num_examples, pairs=pairs)
    return self.sets[key]


@dataclasses.dataclass
class Output:
  metrics: dict[str, float]  # Unprefixed names (the suite adds 'NAME/').
  figures: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # RGB uint8.


class Evaluator:
  """Subclasses set DEFAULTS (their config keys), REQUIRED, and implement run()."""
  type_name = ''
  DEFAULTS: dict[str, Any] = {}
  REQUIRED: tuple[str, ...] = ()

  def __init__(self, name: str, cfg, config, context: Context):
    self.name, self.cfg, self.config, self.ctx = name, cfg, config, context

  @property
  def every_steps(self) -> int:
    return int(self.cfg.every_steps or 0)

  def run(self, params, cache: dict) -> Output:
    """`cache`: shared by the evaluators of one suite run (sets embedded once)."""
    raise NotImplementedError

  def num_figures(self) -> int:
    n = self.cfg.get('num_figures')
    return int(self.config.eval_num_figures if n is None else n)


def head_names(config) -> list[str]:
  """'head k', or 'head k (speech)' / '(sound)' when the disentangle loss tied the first
  K/2 heads to speech and the rest to sound (docs/method.md#regularisers); otherwise nothing
  fixes a head's role, so no name is claimed."""
  k = config.model.num_heads
  names = [f'head {i}' for i in range(k)]
  if k > 1 and k % 2 == 0 and float(config.loss.weights.disentangle) > 0:
    names = [f'{n} ({"speech" if i < k // 2 else "sound"})' for i, n in enumerate(names)]
  return names
