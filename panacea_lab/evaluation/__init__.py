"""Evaluation: batched greedy generation, the judges (oracle, keyword, beaver-dam) and the metrics
HS / refusal / other / FA.

May import: panacea_lab.config, data, models.
"""
