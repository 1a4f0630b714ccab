"""Smart Retrieval: content-based image retrieval with CLIP.

Data flows one way: files -> embeddings -> index -> search -> UI/API. The modules directly in this
package are the serving library; research code lives in its subpackages (composed/ holds the model
code that serving also uses; data/, eval/, train/, shapes/ and cli/ are never imported by serving).
"""

__version__ = "0.1.0"
