"""The hand count of a step's FLOPs (trainer/flops.py) against XLA's count of the compiled
step, and its linear / quadratic split."""

import jax
import pytest

from conftest import load_config
from denseav_jax.models import denseav
from denseav_jax.parallel import sharding
from denseav_jax.trainer import flops
from denseav_jax.trainer import mfu
from denseav_jax.trainer import optim
from denseav_jax.trainer import plan as plan_lib
from denseav_jax.trainer import state as state_lib
from denseav_jax.trainer import step as step_lib

LANGUAGE = ('denseav_language.py', '')


def _small_paper_architecture(batch):
  """denseav_language:runlocal with towers of the paper's kind (attention ViT, HuBERT's
  seven-conv front end) at a size where matrix products dominate, on one device."""
  c = plan_lib.with_batch(load_config('denseav_language.py', 'runlocal'), batch)
  c.model.image.update(mixer='attention', width=128, depth=2, num_heads=4, patch_size=8)
  c.model.audio.update(frontend='conv', conv_channels=64, width=128, depth=2, num_heads=4,
                       mlp_dim=512)
  c.model.code_dim = 64
  c.mesh = (('data', 1),)
  return c


def test_hand_count_matches_xla_on_the_compiled_step():
  """XLA's count of the whole compiled train step (one device, no loops with more than one
  trip) within 10 % of the hand count, which leaves out norms, softmaxes and other
  elementwise work (measured: XLA 6-7 % above it here)."""
  c = _small_paper_architecture(8)
  mesh = sharding.mesh_from_config(c, jax.devices()[:1])
  model = denseav.build_model(c)
  tx = optim.make_optimizer(c, 2)
  abstract, shardings = state_lib.abstract_state(c, model, tx, mesh)
  compiled = step_lib.make_train_step(c, model, tx, mesh, shardings, 2).lower(
      abstract, plan_lib.abstract_batch(c, mesh)).compile()
  xla = mfu.cost_analysis(compiled)['flops']
  hand = flops.count(c, 8, 2)
  assert xla == pytest.approx(hand['total'], rel=0.10), (xla, hand['total'])
  assert xla >= hand['total']  # Only what the hand count leaves out is on top.


# XLA's counts for full-size denseav_language phase 2 from the TPU compiler on this machine
# (docs/pods.md#flops): per chip per step x chips.
TPU_COMPILED = {40: 1.27e13 * 4, 4096: 2.11e13 * 256}


@pytest.mark.parametrize('batch', sorted(TPU_COMPILED))
def test_full_size_against_the_tpu_compilers_count(batch):
  hand = flops.count(load_config(*LANGUAGE), batch, 2)
  assert hand['total'] == pytest.approx(TPU_COMPILED[batch], rel=0.10)


def test_linear_and_quadratic_parts():
  c = load_config(*LANGUAGE)
  a, b = flops.count(c, 1024, 2), flops.count(c, 4096, 2)
  assert b['linear'] == pytest.approx(4 * a['linear'])
  assert b['quadratic'] == pytest.approx(16 * a['quadratic'])
  # The similarity volume: 14 x 14 pooled image positions x 56 audio steps x 384 channels
  # per pair, 2 FLOPs each, forward: about 1.4e14 at 4,096.
  assert b['quadratic_forward'] == pytest.approx(2 * 196 * 56 * 384 * 4096**2)
  assert 1.3e14 < b['quadratic_forward'] < 1.5e14
  # Towers: ~1.2e12 per example in phase 2 (HuBERT-Large fine-tuned, forward and backward;
  # the image branch forward only, image_grad False), phase 1 their forward only.
  assert 1.1e12 < b['linear_per_example'] < 1.4e12
  one = flops.count(c, 4096, 1)
  assert one['linear_per_example'] < 0.5 * b['linear_per_example']
  assert one['quadratic'] == b['quadratic']
  c.model.image_grad = True  # The image branch's backward joins.
  assert flops.count(c, 4096, 2)['linear'] > b['linear']


def test_architectures_it_does_not_cover_say_so():
  with pytest.raises(ValueError, match='hand count: model.image.mixer'):
    flops.count(load_config(), 8, 2)  # The tiny synthetic model's depthwise-conv mixer.


def test_hand_count_plan_on_a_slice():
  """`compile --hand_count`: per phase, FLOPs per chip and the step at the MFU, no compile."""
  c = plan_lib.with_batch(load_config(*LANGUAGE), 4096)
  result = plan_lib.hand_count_plan(c, 'v5e-256', 1, 'all', 0.4)
  one, two = result['phases']
  assert (one['phase'], two['phase'], result['chips']) == (1, 2, 256)
  assert two['flops_per_chip'] == pytest.approx(two['total'] / 256)
  assert two['step_s'] == pytest.approx(two['total'] / 256 / (197e12 * 0.4))
  text = plan_lib.format_hand_count(result)
  assert 'phase 2: 5.184e+15 FLOPs per step' in text and 'similarity 1.429e+14' in text
