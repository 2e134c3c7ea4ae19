"""Audio-visual similarity: the dense reference (dense.py), the memory-bounded sharded
operator (scalable.py) and the heat maps drawn and scored from the similarity volume."""
