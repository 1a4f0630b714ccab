"""Smart Retrieval web app: Gradio UI at /, JSON REST API at /api, in one process.

Run `python app.py` (offline on the Shapes collection by default); settings come from SR_*
variables. On a Hugging Face Space (SPACE_ID is set) it binds 0.0.0.0 so the Space can reach it.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

from retrieval.catalog import Catalog
from retrieval.config import Settings


def create_app(catalog: Catalog | None = None, settings: Settings | None = None):
    """The FastAPI app with the UI mounted. Gradio is imported here, not above, so that `python
    app.py` can load the first collection while Gradio's 4 s of imports run (see BENCHMARKS.md)."""
    import gradio as gr

    from webapp.api import create_api
    from webapp.api.cors import keep_outermost
    from webapp.ui import build_ui, launch_options

    settings = settings or Settings.from_env()
    catalog = catalog or Catalog.from_file(settings.collections_file, settings)
    app = create_api(catalog, settings)
    demo = build_ui(catalog, settings)
    app = gr.mount_gradio_app(app, demo, path="", **launch_options(settings))
    keep_outermost(app)  # the UI's own CORS handling must not answer for /api
    return app


def bind_address(settings: Settings) -> tuple[str, int]:
    """SR_HOST/SR_PORT, else Gradio's own GRADIO_SERVER_NAME/GRADIO_SERVER_PORT; a Space
    (SPACE_ID set) must listen on every interface."""
    env = os.environ
    host = settings.host if "SR_HOST" in env else env.get("GRADIO_SERVER_NAME", settings.host)
    if env.get("SPACE_ID") and "SR_HOST" not in env:
        host = "0.0.0.0"
    port = settings.port if "SR_PORT" in env else int(env.get("GRADIO_SERVER_PORT", settings.port))
    return host, port


def port_is_free(host: str, port: int) -> bool:
    """Whether a server can listen there; like uvicorn, a port that a stopped server's
    connections still hold (TIME_WAIT) counts as free."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    settings = Settings.from_env()
    host, port = bind_address(settings)
    if not port_is_free(host, port):
        sys.exit(
            f"port {port} on {host} is in use: stop what runs there, or set SR_PORT to another"
        )
    catalog = Catalog.from_file(settings.collections_file, settings)
    first = next(iter(catalog.names()), None)
    if first:  # a failure is kept by the catalog and shown in the app, as on first use
        threading.Thread(target=catalog.status, args=(first,), daemon=True).start()
    app = create_app(catalog, settings)
    import uvicorn

    uvicorn.run(app, host=host, port=port)
