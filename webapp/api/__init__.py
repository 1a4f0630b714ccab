"""JSON REST API for museum websites: search, item metadata and images, tags, heatmaps, uploads.

`create_api(catalog, settings)` returns the FastAPI app that app.py mounts the Gradio UI onto.
Reading is public; writing (uploading or deleting a collection) needs the key from SR_API_KEY in
the X-API-Key header. Every error is a JSON body {"error": kind, "message": text for a person}.
Models and indexes are shared read-only between requests; requests keep no state.

One router per resource: `collections` (collections and items), `search`, `analysis` (tags and
heatmaps), `overview` (the collection map, near-duplicates) and `service` (health, and JSON
errors for unknown paths).
"""

import logging

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from retrieval import __version__
from retrieval.catalog import Catalog
from retrieval.config import Settings
from retrieval.uploads import sweep_staging, uploaded_specs
from webapp.api import analysis, collections, overview, search, service
from webapp.api.cors import ApiCors
from webapp.api.deps import API_KEY_HEADER
from webapp.api.errors import install_error_handlers
from webapp.api.limits import BodySizeLimit

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Search museum collections by text, by image, or by an image plus a modification "
    "text; get item metadata, images, tags and relevance heatmaps. Reading is public; "
    f"uploading or deleting a collection needs the `{API_KEY_HEADER}` header."
)


def create_api(catalog: Catalog, settings: Settings | None = None) -> FastAPI:
    """The REST API over `catalog`; collections load on their first request."""
    settings = settings or Settings.from_env()
    # the docs pages' scripts are served from the package, not a CDN: /docs works offline
    app = FastAPIOffline(title="Smart Retrieval API", version=__version__, description=DESCRIPTION)
    for name in sweep_staging(settings):
        log.info("removed %s, left in the uploads folder by an interrupted upload", name)
    for spec in uploaded_specs(settings):  # collections uploaded before a restart come back
        catalog.specs.setdefault(spec.name, spec)
    app.state.catalog = catalog
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, settings=settings)
    app.add_middleware(ApiCors, origins=tuple(settings.cors_origins))
    app.include_router(service.router(catalog))
    for resource in (collections, search, analysis, overview):
        app.include_router(resource.router(catalog, settings))
    app.include_router(service.fallback)  # last: it answers every other path under /api
    return app
