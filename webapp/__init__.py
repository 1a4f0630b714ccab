"""The web front: the Gradio UI (`webapp.ui`) and the JSON REST API (`webapp.api`), both thin over `retrieval`."""
