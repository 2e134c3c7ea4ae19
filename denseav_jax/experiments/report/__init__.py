"""The comparison table of runs' evaluations (`python -m denseav_jax.report`, usage in
denseav_jax/report.py) and, for sweeps, one plot per axis. Python API:

  runs = load_runs(['runs/a', 'runs/b'], step='best', best_metric='retrieval/a2i_r1')
  print(make_table(runs))
  items = load_dirs(['runs/sweep'])          # Runs, and a Sweep per sweep directory.
  print(make_table(items[0].rows, metrics=['speech_prompted/basic_ap']))
"""

from denseav_jax.experiments.report.command import define_flags, main
from denseav_jax.experiments.report.loading import load_dirs, load_runs
from denseav_jax.experiments.report.plots import axis_series, plot_keys, plot_sweep
from denseav_jax.experiments.report.rows import Row, chance_ratios, group_runs, summarise
from denseav_jax.experiments.report.runs import SEED_RE, Run, eval_steps, load_metrics, seed_group
from denseav_jax.experiments.report.sweeps import Sweep, load_sweep, read_spec
from denseav_jax.experiments.report.tables import CHANCE, MISSING, columns, make_table, table_columns

__all__ = [
    'CHANCE', 'MISSING', 'SEED_RE', 'Row', 'Run', 'Sweep', 'axis_series', 'chance_ratios',
    'columns', 'define_flags', 'eval_steps', 'group_runs', 'load_dirs', 'load_metrics',
    'load_runs', 'load_sweep', 'main', 'make_table', 'plot_keys', 'plot_sweep', 'read_spec',
    'seed_group', 'summarise', 'table_columns']
