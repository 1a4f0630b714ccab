"""The web front: the Gradio UI (`webapp.ui`) and the JSON REST API (`webapp.api`), both thin
over `retrieval`; `webapp.analysis` is the tagging and heatmap code the two share."""
