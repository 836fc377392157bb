"""Experiment runners: the sweeps that train and evaluate (each returns a tidy frame of rows)."""
