"""panacea-lab: harmful fine-tuning of LLMs and the defenses against it, stage by stage.

The folders follow the pipeline and may import only the folders listed before them
(tests/test_layers.py holds the order):

    config.py, paths.py, hashing.py, files.py   leaves: validated dataclasses; where user data lives;
                                                content hashes; atomic writes
    data/          the embedded world, real data (adapters, fetching), encoding and batching
    models/        loading base models and adapters, presets, conversion, the embedded base model
    training/      the one loop, its loss, checkpoints, the run store, pretraining the embedded model
    defenses/      one module per defense, and the registry that lists them
    evaluation/    generation, judges, HS / refusal / other / FA
    settings.py    named defaults (calibrated values, training recipes)
    pipeline/      the cached stages and evaluations, keys by content, pre-flight checks, export
    tables/        results files: reading, writing, comparing; the README's tables; row selections
    studies/       the experiment runners: sweeps, baselines, calibration, probes, ablations, overhead
    plotting/      every figure, in one style per method
    explorer/      notebook 04's live explorer
    experiments/   specs (experiments/*.yaml) and the runner behind `panacea-lab run`
    cli.py         the `panacea-lab` command (thin: no logic of its own)

docs/ARCHITECTURE.md tells the same story with a worked example of adding a defense.
"""
