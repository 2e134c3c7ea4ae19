"""A config.json written before a model key existed (a run, or a converted model) still
loads: the model keys added since take the values that mean what it did; its own values and
evaluators stay as they were."""

import json

from conftest import load_config
from denseav_jax.checkpoint import model_io
from denseav_jax.models import denseav


def test_keys_added_later_take_their_defaults(tmp_path):
  c = load_config()
  data = json.loads(c.to_json_best_effort())
  for key in ('tower_microbatches', 'aligner_remat'):
    del data['model'][key]
  data['model']['code_dim'] = 24  # Its own value.
  data['evals'] = {'mine': data['evals']['retrieval']}  # Its own evaluators only.
  (tmp_path / 'config.json').write_text(json.dumps(data))
  got = model_io.load_config(str(tmp_path))
  assert got.model.tower_microbatches == 1 and got.model.aligner_remat == 'none'
  assert got.model.code_dim == 24
  assert sorted(got.evals) == ['mine']


def test_added_model_keys_are_the_defaults():
  c = load_config('default.py')
  for key, value in denseav.ADDED_MODEL_KEYS.items():
    assert c.model[key] == value, key
