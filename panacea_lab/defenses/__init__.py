"""One small module per defense; each plugs into the one loop in train.py."""
