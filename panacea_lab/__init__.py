"""panacea-lab: harmful fine-tuning of LLMs and the defenses against it, stage by stage.

The folders follow the pipeline and may import only the folders listed before them:

    config.py, paths.py   leaves: validated dataclasses and hashing; where user data lives
    data/                 the embedded world, real data (adapters, fetching), encoding and batching
    models/               loading base models and adapters, presets, conversion, the embedded base model
    training/             the one loop, the run store, the cached stages
    defenses/             one module per defense, and the registry that lists them
    evaluation/           generation, judges, HS / refusal / other / FA
    analysis/             sweeps, safety coefficients, trajectories, overhead, plots
    cli.py                the `panacea-lab` command (thin: no logic of its own)

docs/ARCHITECTURE.md tells the same story with a worked example of adding a defense.
"""
