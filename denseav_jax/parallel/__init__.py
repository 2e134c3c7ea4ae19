"""Running on many devices: the mesh and batch placement (sharding.py), the partitioning
rules from logical axis names to mesh axes (partitioning.py), and multi-host start-up
(distributed.py)."""
