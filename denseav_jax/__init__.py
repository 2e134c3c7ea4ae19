"""DenseAV in JAX: self-supervised grounding of spoken words and sounds in images.

The package reads from its folder names (docs/architecture.md): configs (experiment
files and their loader), parallel (meshes, partitioning, multi-host start-up), data (real
sets, the synthetic world, transforms, Grain pipelines), models (the towers and aligners),
similarity (the similarity volume, the sharded score operator, heat maps), losses,
checkpoint, evals, trainer, then inference, conversion and experiments on top; the
command-line entry points (train, evaluate, predict, convert, prepare, sweep, report) are
thin modules at the top level, benchmarks in bench/, developer tools in tools/ and test
scaffolding in testing/.
"""
