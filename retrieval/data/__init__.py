"""Research dataset readers (CIRR, FashionIQ, CIRCO, NoisyArt, class folders) and cached features.

Serving never imports this package: a collection is a folder read by `retrieval.collection`.
"""
