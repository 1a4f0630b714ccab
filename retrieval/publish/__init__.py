"""Publishing hosted collections (NoisyArt, CIRR, FashionIQ, a folder) to the Hugging Face Hub.

Research side: it reads datasets (`retrieval.data`) and runs their protocols (`retrieval.eval`), so
nothing that serves collections imports it. `sources` says what each collection serves, `evaluation`
measures the published vectors, `card` writes the dataset card, `pipeline` puts them together.
"""
