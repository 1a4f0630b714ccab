"""Smart Retrieval web app: Gradio UI at /, JSON REST API at /api, in one process.

Run `python app.py` (offline on the Shapes collection by default); settings come from SR_* variables.
"""

from __future__ import annotations

import gradio as gr
import uvicorn
from fastapi import FastAPI

from retrieval.catalog import Catalog
from retrieval.config import get_settings
from webapp.api import create_api
from webapp.ui import build_ui, launch_options


def create_app(catalog: Catalog | None = None) -> FastAPI:
    catalog = catalog or Catalog.from_file()
    app = create_api(catalog)
    demo = build_ui(catalog)
    return gr.mount_gradio_app(app, demo, path="", **launch_options())


if __name__ == "__main__":
    settings = get_settings()
    uvicorn.run(create_app(), host=settings.host, port=settings.port)
