"""Models: loading a base model and its LoRA adapters, real-model presets, conversion of SmolLM2,
and pretraining of the committed embedded base model.

May import: panacea_lab.config, panacea_lab.paths, panacea_lab.data.
"""
