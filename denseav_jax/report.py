"""A markdown table comparing the evaluation results of runs, in the paper's columns.

  python -m denseav_jax.report DIR1 DIR2 ... [--out TABLE.md] [--step N|latest|best]
      [--best_metric KEY] [--labels a,b] [--metrics KEY1,KEY2] [--nopaper_columns]
      [--chance_ratio] [--plots DIR]

Each DIR is a run workdir (its DIR/eval/STEP/metrics.json; a converted model evaluated
without training has DIR/eval/0), an evaluation folder DIR/eval/STEP, a metrics.json file,
a directory whose subfolders are run workdirs (one row per subfolder, labelled by its
name), or a sweep directory (one with a sweep.json: its points, their axis values, seeds
and metric; runs DIR/POINT_seedN): one row per point, in the sweep's order, with a column
per axis; points whose runs have not finished yet are listed as such. Runs whose labels
differ only by a trailing `_seed{N}` / `-seed{N}` form one row: the mean ± the population
standard deviation over the seeds, with the seed count.

--step picks each workdir's evaluation: `latest` (default), a step number, or `best`: the
step with the highest --best_metric (a metrics.json key, e.g. retrieval/a2i_r1). An
evaluation folder or metrics.json named on the command line is used as given. --labels
(one per DIR) replaces the folder names; a directory's rows become LABEL/SUBFOLDER
(LABEL/POINT).

--metrics adds columns by metrics.json key (a sweep's own metric comes first);
--chance_ratio shows prompted-segmentation AP as multiples of its chance AP. The table is
printed, and written atomically to --out. For a sweep, --plots DIR (default: the folder of
--out) gets one AXIS.png per axis, linked below the table in --out.
"""

from denseav_jax import cli
from denseav_jax.experiments.report import command

if __name__ == '__main__':
  command.define_flags()
  cli.run_main(command.main)
