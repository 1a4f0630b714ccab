"""Smart Retrieval: content-based image retrieval with CLIP.

Data flows one way: files -> embeddings -> index -> search -> UI/API.
"""

__version__ = "0.1.0"
