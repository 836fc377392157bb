"""Experiments as data: specs (experiments/*.yaml) and the runner that turns one into its results file."""
