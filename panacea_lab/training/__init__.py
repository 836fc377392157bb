"""Training: the one loop (loop.py), the run store (store.py) and the cached stages built on them.

May import: panacea_lab.config, data, models; the stages read defenses through their registry.
"""
