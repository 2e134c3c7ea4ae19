"""What every ablation sweep shares: the base config and the per-point budget.

Each file in this folder is a sweep (`python -m denseav_jax.sweep --config
configs/ablations/NAME.py[:ARG] --workdir DIR`). ARG picks the base:

  (none)            the synthetic-world study: configs/synthetic.py (the quick-start model)
                    with the study budget below, runnable on a laptop CPU;
  language | sound | 2head   the paper's model (configs/denseav_ARG.py) with its full recipe,
                    for a pod (`--launcher tpu|slurm`); point it at the data with
                    --config.overrides or edit the base config.

docs/ablations.md has the synthetic study's results and how they were run.
"""

from denseav_jax import errors

# The synthetic study's budget per run: 250 steps of batch 32 (a fifth of the quick-start
# run), the warm-up and cosine schedule compressed to it, one evaluation at the end without
# figures: about 2 minutes per run on the 2-core CPU (75 s of training, the rest start-up,
# compilation and evaluation). docs/ablations.md lists what ran with how many seeds.
STUDY_BUDGET = {
    'num_train_steps': 250,
    'warmup_steps': 25,
    'eval_every_steps': 0,
    'checkpoint_every_steps': 125,
    'eval_num_figures': 0,
}
STUDY_SEEDS = (0, 1, 2)
PAPER_BASES = ('language', 'sound', '2head')


def base(arg: str | None, synthetic: str = 'configs/synthetic.py') -> tuple[str, dict]:
  """(base config, overrides every point gets) for the sweep's ARG."""
  arg = arg or ''
  if not arg:
    return synthetic, dict(STUDY_BUDGET)
  if arg in PAPER_BASES:
    return f'configs/denseav_{arg}.py', {}
  raise errors.ConfigError(
      f'unknown ablation base {arg!r}: use none (the synthetic study) or one of '
      f'{", ".join(PAPER_BASES)} (the paper models)')


def seeds(arg: str | None) -> tuple[int, ...]:
  """The study runs several seeds; a paper-scale point runs once by default."""
  return STUDY_SEEDS if not arg else (0,)
