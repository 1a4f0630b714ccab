"""Evaluation protocols and their metrics (CIRR, FashionIQ, CIRCO, NoisyArt)."""
