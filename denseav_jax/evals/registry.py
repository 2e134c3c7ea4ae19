"""Evaluators by name: `config.evals.NAME = dict(type=TYPE, ...)` (docs/evaluation.md).

EVALUATORS maps each type name to its class (a new evaluator is one module and one line
here); each class declares its config keys and their defaults in `DEFAULTS`;
`entries(config)` checks every entry of config.evals against them, so a misspelt key or
type fails before any work.
"""

from __future__ import annotations

import ml_collections

from denseav_jax import errors
from denseav_jax.data import sources
from denseav_jax.data.synthetic import world
from denseav_jax.evals import disentangle
from denseav_jax.evals import retrieval
from denseav_jax.evals import segmentation
from denseav_jax.evals import sets

EVALUATORS: dict[str, type] = {
    cls.type_name: cls for cls in (segmentation.PromptedSegmentation, retrieval.Retrieval,
                                   disentangle.Disentangle)}

# Keys every evaluator takes, with defaults (None: the config-wide value).
COMMON = dict(
    type='',
    enabled=True,  # False (--config.evals.NAME.enabled=False) leaves the evaluator out.
    every_steps=None,  # Evaluate every this many training steps (None: config.eval_every_steps).
    batch_size=None,  # Global evaluation batch (None: config.eval_batch_size).
)


def entries(config, names=None) -> dict[str, ml_collections.ConfigDict]:
  """config.evals (or the `names` among them), each completed with its type's defaults.

  Raises errors.ConfigError naming the entry and key for an unknown type or key, and for a
  name in `names` that config.evals does not have.
  """
  evals = config.evals
  out = {}
  for name in sorted(evals.keys()):
    entry = evals[name]
    if entry is None:
      continue
    if not hasattr(entry, 'keys') or 'type' not in entry:
      raise errors.ConfigError(f'config.evals.{name} must be a dict with a type (one of '
                               f'{sorted(EVALUATORS)}), got {entry!r}')
    cls = EVALUATORS.get(entry['type'])
    if cls is None:
      raise errors.ConfigError(f'config.evals.{name}.type={entry["type"]!r} is not one of '
                               f'{sorted(EVALUATORS)}')
    allowed = {**COMMON, **cls.DEFAULTS}
    unknown = sorted(set(entry.keys()) - set(allowed))
    if unknown:
      raise errors.ConfigError(f'config.evals.{name} has unknown key(s) {unknown}; a '
                               f'{entry["type"]} evaluator takes {sorted(allowed)}')
    full = dict(allowed)
    full.update({k: entry[k] for k in entry.keys()})
    missing = [k for k in cls.REQUIRED if not full.get(k)]
    if missing:
      raise errors.ConfigError(f'config.evals.{name} needs {", ".join(missing)} (a '
                               f'{entry["type"]} evaluator; see docs/evaluation.md)')
    if full['every_steps'] is None:
      full['every_steps'] = int(config.eval_every_steps)
    if full['batch_size'] is None:
      full['batch_size'] = int(config.eval_batch_size)
    if full['enabled']:
      out[name] = ml_collections.ConfigDict(full)
  if names:
    unknown = [n for n in names if n not in out]
    if unknown:
      raise errors.ConfigError(f'--evals names {unknown}, which config.evals does not have '
                               f'(it has {sorted(out)})')
    out = {n: out[n] for n in names}
  return out


def _check_dataset(config, key: str, dataset, paths: bool) -> None:
  """An evaluation set's NAME[:SPLIT] (or synthetic:SPLIT[:MODALITY]) of config key `key`."""
  try:
    name, split, modality = sets.parse(dataset)
  except errors.DataError:
    raise errors.ConfigError(f'{key}={dataset!r}: write NAME[:SPLIT] (e.g. '
                             "'places_audio:val') or 'synthetic:SPLIT[:MODALITY]'") from None
  if name == 'synthetic':
    if split not in sets.SYNTHETIC_SPLITS or modality not in ('', *world.MODALITIES):
      raise errors.ConfigError(
          f'{key}={dataset!r}: the synthetic world\'s sets are '
          f'{", ".join(f"synthetic:{s}" for s in sets.SYNTHETIC_SPLITS)} (retrieval takes '
          f'a modality: {", ".join(world.MODALITIES)})')
    return
  if name not in sources.names():
    raise errors.ConfigError(f'{key}={dataset!r}: {name!r} is not a data set; choose one of '
                             f'{sources.names()} (or synthetic:SPLIT)')
  if modality:
    raise errors.ConfigError(f'{key}={dataset!r}: only the synthetic world takes a modality')
  sources.check_location(config, name, paths, where=key)


def check(config, names=None, paths: bool = True) -> dict[str, ml_collections.ConfigDict]:
  """config.evals (or the `names` among them) and the shared evaluation keys, before any
  work: every entry's type and keys (`entries`), its batch size and counts, its data sets
  (known; with `paths`, readable as config.data says from an existing folder) and what
  its type needs of the model. Raises errors.ConfigError naming the key; returns the
  entries."""
  for key, low in (('eval_batch_size', 1), ('eval_every_steps', 0), ('eval_num_figures', 0)):
    if int(config[key]) < low:
      raise errors.ConfigError(f'config.{key}={config[key]} must be >= {low}')
  out = entries(config, names)
  for name, e in out.items():
    where = f'config.evals.{name}'
    for key, low in (('batch_size', 1), ('every_steps', 0), ('num_examples', 0),
                     ('num_figures', 0)):
      if e.get(key) is not None and int(e[key]) < low:
        raise errors.ConfigError(f'{where}.{key}={e[key]} must be >= {low}')
    for key in ('dataset', 'speech', 'sound'):
      if e.get(key):
        _check_dataset(config, f'{where}.{key}', e[key], paths)
    if e.type == 'disentangle' and int(config.model.num_heads) != 2:
      raise errors.ConfigError(
          f'{where} (disentangle) needs a two-head model, but model.num_heads='
          f'{config.model.num_heads}: remove the evaluator or use a two-head config')
  return out


def build(config, context, names=None) -> list:
  """The evaluators of config.evals (or of `names`), in name order."""
  return [EVALUATORS[e.type](name, e, config, context)
          for name, e in entries(config, names).items()]

