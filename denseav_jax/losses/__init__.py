"""DenseAV's training loss (docs/method.md#losses): the contrastive loss over the B x B score
matrix (contrastive.py), the regularisers on the matched-pair similarity volume
(regularisers.py), and their weighted sum (objective.py)."""
