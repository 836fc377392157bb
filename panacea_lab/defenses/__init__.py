"""One small module per defense; each plugs into the one loop in train.py.

Alignment-stage defenses are selected by the AlignConfig field of the same name (at most one).
"""
from panacea_lab.defenses.booster import BoosterConfig
from panacea_lab.defenses.repnoise import RepNoiseConfig
from panacea_lab.defenses.vaccine import VaccineConfig

ALIGNMENT_DEFENSES = {"vaccine": VaccineConfig, "repnoise": RepNoiseConfig, "booster": BoosterConfig}
