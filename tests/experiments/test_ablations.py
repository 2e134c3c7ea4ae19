"""Every ablation sweep in configs/ablations builds: each point's training config exists,
is valid and builds a model, on the synthetic study base and on the paper models."""

import os

import pytest

from denseav_jax import configs
from denseav_jax.models import denseav
from denseav_jax.experiments.sweep import configs as sweep_configs
from denseav_jax.experiments.sweep import runner
from denseav_jax.experiments.sweep import spec
from denseav_jax.trainer import optim

from conftest import ROOT
ABLATIONS = os.path.join(ROOT, 'configs', 'ablations')
SWEEPS = ('aggregator', 'heads', 'regularisers', 'aligners', 'finetune', 'lora', 'batch_size',
          'disentangle', 'study')
PAPER = {name: ('language', 'sound', '2head') for name in SWEEPS}
PAPER.update(disentangle=('2head',), study=())


def _module(name):
  return configs.module(os.path.join(ABLATIONS, f'{name}.py'))


def _sweep(name, arg, tmp_path):
  return runner.load(_module(name).get_config(arg), str(tmp_path / f'{name}_{arg}'),
                     f'configs/ablations/{name}.py')


@pytest.mark.parametrize('name', SWEEPS)
def test_synthetic_sweep_builds_every_point(name, tmp_path):
  sweep = _sweep(name, None, tmp_path)
  assert sweep.metric and len(sweep.points) >= 2
  assert sweep.common['num_train_steps'] == 250  # The study budget.
  base = sweep_configs.load_base(sweep.base)
  built = set()
  for point in sweep.points:
    config, _ = sweep_configs.build(base, {**sweep.common, **point.overrides}, point.label)
    denseav.build_model(config)
    optim.make_optimizer(config)
    built.add(repr(sorted((k, repr(v)) for k, v in point.overrides.items())))
  assert len(built) == len(sweep.points)  # No two points train the same config.


@pytest.mark.parametrize('name,arg', [(n, a) for n, args in PAPER.items() for a in args])
def test_paper_sweep_builds_every_point(name, arg, tmp_path):
  sweep = _sweep(name, arg, tmp_path)
  assert sweep.base == f'configs/denseav_{arg}.py' and not sweep.common
  base = sweep_configs.load_base(sweep.base)
  for point in sweep.points:
    config, _ = sweep_configs.build(base, point.overrides, point.label)
    assert config.input.image_size == 224  # The paper model, not the synthetic one.


def test_heads_cross_is_aggregator_times_heads(tmp_path):
  sweep = _sweep('heads', '2head,cross', tmp_path)
  assert len(sweep.points) == 14
  assert sweep.points[0].label == 'misa-k1'
  assert dict(sweep.points[0].coords) == {'agg': 'misa', 'heads': 'k1'}
  # A one-head point of the two-head model leaves its disentanglement evaluator out.
  assert sweep.points[0].overrides['evals.disentangle.enabled'] is False


def test_study_shares_one_default_point():
  study = _module('study')
  points = study.points()
  default = points[0]
  assert default.label == 'default' and default.overrides == {}
  axes = dict(default.coords)
  assert set(axes) == {'agg', 'heads', 'off', 'image', 'audio', 'finetune', 'lora', 'batch'}
  for p in points[1:]:
    assert p.overrides and '=' in p.label
    assert all(a in axes for a, _ in p.coords)
  # finetune=frozen is also the lora axis's `frozen`: trained once, on both axes.
  frozen = next(p for p in points if p.label == 'finetune=frozen')
  assert dict(frozen.coords) == {'finetune': 'frozen', 'lora': 'frozen'}
  assert spec.union(points) == points  # Labels unique.


def test_common_rejects_unknown_bases():
  common = _module('common')
  with pytest.raises(ValueError, match="unknown ablation base 'x'"):
    common.base('x')
