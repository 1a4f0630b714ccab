"""Composed-query models: the training-free baselines, the CLIP4Cir Combiner and SEARLE-style phi.

Model code only (build, load, apply): serving imports it; training lives in `retrieval.train`.
"""
