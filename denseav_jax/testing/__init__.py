"""Test scaffolding (not used by the library): small copies of the real data sets' layouts
(fixtures.py, their files in fixture_media.py), tolerances for thresholded and ranked
metrics (tolerance.py) and PyTorch re-statements of the release's model (torch_models.py,
torch_denseav.py) for parity tests and benchmarks."""
