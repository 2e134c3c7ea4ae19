"""Audio-visual similarity: the dense reference (dense.py), the memory-bounded sharded
operator (scalable.py), the score matrix as config.sim asks for it from either (matrix.py),
and the heat maps drawn and scored from the similarity volume (heatmap.py)."""
