"""The pipeline as cached stages: align -> the user's fine-tuning (attack) -> evaluate, each under
at most one defense read from the registry.

    context.py    worlds and tokenizers (cached), the data of each role, the defenders' streams
    stages.py     align and attack (one run type for every fine-tuning method), model rebuilding
    evaluations.py cached evaluations, after an optional post-fine-tuning transform
    preflight.py  the checks that need the disk, run before any stage

May import: config, data, models, training, defenses, evaluation.
"""
from panacea_lab.pipeline.evaluations import EvalJob, evaluate
from panacea_lab.pipeline.preflight import preflight
from panacea_lab.pipeline.stages import align, attack, finetune, load_stage_model

__all__ = ["EvalJob", "align", "attack", "evaluate", "finetune", "load_stage_model", "preflight"]
