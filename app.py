"""Smart Retrieval web app: Gradio UI at /, JSON REST API at /api, in one process.

Run `python app.py` (offline on the Shapes collection by default); settings come from SR_*
variables. On a Hugging Face Space (SPACE_ID is set) it binds 0.0.0.0 so the Space can reach it.
"""

from __future__ import annotations

import os

import gradio as gr
import uvicorn
from fastapi import FastAPI

from retrieval.catalog import Catalog
from retrieval.config import Settings
from webapp.api import create_api
from webapp.api.cors import keep_outermost
from webapp.ui import build_ui, launch_options


def create_app(catalog: Catalog | None = None, settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    catalog = catalog or Catalog.from_file(settings.collections_file, settings)
    app = create_api(catalog, settings)
    demo = build_ui(catalog, settings)
    app = gr.mount_gradio_app(app, demo, path="", **launch_options(settings))
    keep_outermost(app)  # the UI's own CORS handling must not answer for /api
    return app


def bind_address(settings: Settings) -> tuple[str, int]:
    """SR_HOST/SR_PORT; a Space (SPACE_ID set) must listen on every interface."""
    host = (
        "0.0.0.0" if os.environ.get("SPACE_ID") and "SR_HOST" not in os.environ else settings.host
    )
    return host, settings.port


if __name__ == "__main__":
    settings = Settings.from_env()
    host, port = bind_address(settings)
    uvicorn.run(create_app(settings=settings), host=host, port=port)
