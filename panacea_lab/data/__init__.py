"""Data: the embedded synthetic world, real benchmark files (adapters, fetching), encoding and batching.

May import: panacea_lab.config, panacea_lab.paths. Nothing here loads a model.
"""
