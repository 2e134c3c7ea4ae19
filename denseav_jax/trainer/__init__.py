"""Training: the train state initialised into its shardings (state), the two-phase optimizer
(optim), the jitted update step (step), the loop with checkpoints, evaluation, preemption
and progress (loop, preemption, progress)."""
