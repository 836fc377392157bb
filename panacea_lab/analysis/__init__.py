"""Analysis: sweeps over stages and defenses (tidy frames), baselines, trajectories, safety
coefficients, system overhead and the figures.

May import everything below it: config, data, models, training, defenses, evaluation.
"""
