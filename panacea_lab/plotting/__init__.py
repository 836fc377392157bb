"""Figures: one look per method (from the registry), print sizes, files byte-identical on rerun."""
