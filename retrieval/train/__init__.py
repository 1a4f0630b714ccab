"""Training: one loop (`loop`) and the recipes that use it (CLIP, CLIP4Cir stages, phi, artworks)."""
