"""What the routers share: request parameters, the API key check and reading an uploaded image.

Parameter types whose limits come from the settings (k up to SR_MAX_K, images up to
SR_MAX_IMAGE_MB) are built per app by `Params`, so /openapi.json states the server's own limits.
"""

# No `from __future__ import annotations`: FastAPI must see the Annotated aliases.

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import File, Form, Query, Request, Security, UploadFile
from fastapi import Path as PathParam
from fastapi.security import APIKeyHeader

from retrieval.catalog import Catalog
from retrieval.config import Settings
from retrieval.errors import BadInput, TooLarge
from webapp.api.errors import Forbidden, Unauthorized
from webapp.api.limits import MB

MAX_TEXT_CHARS = 2_000  # longer than any model context; beyond it the request is refused
COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
ITEM_PATTERN = r"^[A-Za-z0-9._-]{1,255}$"
API_KEY_HEADER = "X-API-Key"

ItemId = Annotated[
    str, PathParam(pattern=ITEM_PATTERN, description="item id", examples=["scene-0001"])
]
Offset = Annotated[int, Query(ge=0, le=10_000, description="results to skip (paging)")]
MinScore = Annotated[
    float | None,
    Query(ge=-1.0, le=1.0, description="drop results below this cosine similarity"),
]
# Optional uploads and ids are typed without `| None` so the schema does not offer `null`,
# which multipart cannot carry; an absent or empty field means "not given".
ItemForm = Annotated[
    str,
    Form(max_length=255, description="id of an item of this collection, instead of a file"),
]


@dataclass(frozen=True)
class Params:
    """Parameter types sized by the settings; `collection` shows a real name as its example."""

    settings: Settings
    collection: Any
    k: Any
    limit: Any
    image_file: Any

    @classmethod
    def of(cls, catalog: Catalog, settings: Settings) -> "Params":
        example = next(iter(catalog.names()), "shapes")
        collection = Annotated[
            str,
            PathParam(
                pattern=COLLECTION_PATTERN,
                description="collection name (see GET /api/collections)",
                examples=[example],
            ),
        ]
        k = Annotated[
            int, Query(ge=1, le=settings.max_k, description="number of results in this page")
        ]
        limit = Annotated[int, Query(ge=1, le=settings.max_k)]
        image_file = Annotated[
            UploadFile, File(description=f"an image (at most {settings.max_image_mb} MB)")
        ]
        return cls(settings, collection, k, limit, image_file)


def key_checker(settings: Settings):
    """The dependency that guards writing: the X-API-Key header must equal SR_API_KEY."""
    key_header = APIKeyHeader(
        name=API_KEY_HEADER, auto_error=False, description="the key set in SR_API_KEY"
    )

    def require_key(key: Annotated[str | None, Security(key_header)] = None) -> None:
        if not settings.api_key:
            raise Forbidden(
                "writing is disabled on this server: start it with SR_API_KEY set to a secret, "
                f"then send that secret in the {API_KEY_HEADER} header"
            )
        if not key or not hmac.compare_digest(key.encode(), settings.api_key.encode()):
            raise Unauthorized(f"missing or wrong API key: send it in the {API_KEY_HEADER} header")

    return require_key


async def one_file_part(request: Request) -> None:
    """A request that sends the `file` field twice is refused: one of the two would be ignored."""
    if "multipart/form-data" in request.headers.get("content-type", ""):
        count = len((await request.form()).getlist("file"))
        if count > 1:
            raise BadInput(f"send one image in the form field 'file', not {count}")


def read_upload(upload: UploadFile, limit_mb: int) -> bytes:
    """The uploaded image's bytes; never more than the limit is read."""
    data = upload.file.read(limit_mb * MB + 1)
    if len(data) > limit_mb * MB:
        raise TooLarge(f"the image is larger than {limit_mb} MB (SR_MAX_IMAGE_MB)")
    if not data:
        raise BadInput("the uploaded file is empty")
    return data


def one_source(file: UploadFile | None, item_id: str | None, what: str) -> UploadFile | None:
    """Exactly one of upload and item id; an empty file input (what browsers send) is no file."""
    if file is not None and not file.filename and not file.size:
        file = None
    if (file is None) == (not item_id):
        raise BadInput(
            f"send the {what} either as an uploaded image (form field 'file') or as an item id "
            "(form field 'item_id'), exactly one of the two"
        )
    return file
