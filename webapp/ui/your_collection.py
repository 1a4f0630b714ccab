"""Your collection tab: a zip of images indexed for this browser session only; downloading or
pushing the selected collection's index.

An upload is extracted by `retrieval.uploads.import_zip` (every member checked, sizes capped)
into the session's folder and embedded with the selected collection's model. Nothing is added
to the shared catalog, so other users never see it, and it goes when the session expires.
"""

import shutil
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
from huggingface_hub import get_token

from retrieval.backbone import display_spec
from retrieval.catalog import Collection, CollectionSpec
from retrieval.collection import safe_id
from retrieval.config import DEFAULTS, Settings
from retrieval.errors import BadInput, NotFound, TooLarge
from retrieval.hub import HUB_PREFIX, PushResult, push_index
from retrieval.index import Index, build_index
from retrieval.search import Searcher
from retrieval.uploads import import_zip, replace_folder
from webapp.ui.common import listen
from webapp.ui.i18n import t
from webapp.ui.shell import Shell, serve_files
from webapp.ui.state import (
    SESSION_PREFIX,
    SessionCollections,
    collection_choices,
    new_session,
    sessions_root,
)

MAX_SESSION_COLLECTIONS = 5


def index_upload(
    session: SessionCollections | None,
    zip_path: str | None,
    name: str,
    base: Collection,
    metadata_path: str | None = None,
    settings: Settings = DEFAULTS,
    progress: bool = True,
) -> tuple[SessionCollections, Collection]:
    """Extract safely, embed with `base`'s model, register in the session (not the catalog)."""
    if not zip_path:
        raise BadInput("choose a .zip of images to upload")
    slug = safe_id((name or Path(zip_path).stem).strip().lower())[:64]
    session = session or new_session(settings)
    key = SESSION_PREFIX + slug
    if key not in session.collections and len(session.collections) >= MAX_SESSION_COLLECTIONS:
        raise TooLarge(f"a session holds at most {MAX_SESSION_COLLECTIONS} uploaded collections")
    target = session.folder / slug
    staging = session.folder / f".incoming-{uuid.uuid4().hex}"
    try:  # built aside: a refused zip leaves the collection of the same name as it was
        folder = import_zip(zip_path, staging / "images", settings)
        metadata = _copy_metadata(metadata_path, staging) if metadata_path else None
        build_index(
            folder,
            staging / "index",
            base.backbone,
            metadata=metadata,
            progress=progress,
            settings=settings,
        )
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    index = Index.load(target / "index", base.backbone)
    spec = CollectionSpec(
        name=key,
        title=f"Your upload: {slug} ({len(index):,} images)",
        index=str(target / "index"),
        model=base.backbone.spec,
        description=f"Uploaded in this session; embedded with {base.spec.title or base.name}'s model.",
        vocabulary=base.spec.vocabulary,
    )
    composers = dict(base.searcher.composers)
    searcher = Searcher(index, base.backbone, composers, max_k=settings.max_k)
    collection = Collection(spec, index, base.backbone, searcher)
    session.collections[key] = collection
    return session, collection


def skip_note(skipped: list[dict], shown: int = 10) -> str:
    """What the upload left out and why, so nothing is dropped without a word."""
    if not skipped:
        return ""
    lines = [
        f"- `{r['file']}`: {r['reason'].removeprefix(Path(r['file']).name + ': ')}"
        for r in skipped[:shown]
    ]
    more = [f"- and {len(skipped) - shown} more"] if len(skipped) > shown else []
    return f"\n\n⚠️ **{len(skipped)}** left out:\n" + "\n".join(lines + more)


def _copy_metadata(metadata_path: str, target: Path) -> Path:
    source = Path(metadata_path)
    if source.suffix.lower() not in {".csv", ".jsonl"}:
        raise BadInput("metadata must be a .csv or .jsonl file")
    target.mkdir(parents=True, exist_ok=True)
    copy = target / f"metadata{source.suffix.lower()}"
    shutil.copyfile(source, copy)
    return copy


def index_archive(collection: Collection, out_dir: Path) -> Path:
    """A zip of the index folder (vectors, metadata, thumbnails) that `Index.load` reads back.

    Built once per index version (named after CURRENT) and reused; written under a temporary
    name and renamed, so two users asking at once never see a half-written zip.
    """
    directory = collection.index.directory
    current = directory / "CURRENT"
    if not current.is_file():
        raise NotFound(f"{collection.name} has no index folder to download")
    version = current.read_text().strip()
    final = out_dir / f"{safe_id(collection.name)}-{safe_id(version)}-index.zip"
    if final.is_file():
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".{uuid.uuid4().hex}"
    made = Path(shutil.make_archive(str(staging), "zip", root_dir=directory))
    made.replace(final)
    return final


def push_to_hub(collection: Collection, repo: str, token: str | None, private: bool) -> PushResult:
    """Upload the index folder to a Hub dataset repo, with the typed token or the app's own
    (huggingface_hub finds HF_TOKEN or a saved login itself)."""
    repo = (repo or "").strip().removeprefix(HUB_PREFIX)
    if repo.count("/") != 1:
        raise BadInput("give the Hub repo as org/name")
    token = (token or "").strip() or None
    if token is None and get_token() is None:
        raise BadInput("pushing needs a Hub token: paste one or set HF_TOKEN for the app")
    return push_index(collection.index.directory, repo, token=token, private=bool(private))


# -- the tab ---------------------------------------------------------------------------------
def build(settings: Settings) -> SimpleNamespace:
    with gr.Tab(t("tab_upload"), id="upload") as page_tab:
        gr.Markdown(t("upload_intro"))
        gr.Markdown(
            f"At most {settings.max_zip_images:,} images, {settings.max_upload_mb} MB.",
            elem_classes=["score-note"],
        )
        model_note = gr.Markdown(elem_id="upload-model-note")
        with gr.Row():
            upload_zip = gr.File(label=t("images_zip"), file_types=[".zip"], elem_id="upload-zip")
            upload_meta = gr.File(
                label=t("metadata_file"), file_types=[".csv", ".jsonl"], elem_id="upload-metadata"
            )
        upload_name = gr.Textbox(label=t("name"), placeholder="my-photos", elem_id="upload-name")
        upload_button = gr.Button(t("index_button"), variant="primary", elem_id="upload-button")
        upload_status = gr.Markdown(elem_id="upload-status")
        with gr.Row():
            archive_button = gr.Button(t("download_index"), elem_id="download-index")
            archive_file = gr.File(
                label=t("index_archive"), interactive=False, elem_id="index-file"
            )
        with gr.Accordion(t("push_title"), open=False):
            hub_repo = gr.Textbox(label=t("hub_repo"))
            hub_token = gr.Textbox(label=t("hub_token"), type="password")
            hub_private = gr.Checkbox(label=t("private"), value=True)
            hub_button = gr.Button(t("push"))
            hub_status = gr.Markdown()
    follows = [model_note]
    return SimpleNamespace(**locals())


def follow(collection: Collection | None) -> tuple:
    """Which model an upload will be embedded with: the chosen collection's."""
    if collection is None:
        return ("Choose a collection that opens: an upload is embedded with its model.",)
    spec = display_spec(collection.index.model_spec())
    return (
        f"Your images will be embedded with the model of **{collection.spec.title or collection.name}**"
        f" (`{spec}`); choose another collection above to use its model instead.",
    )


def wire(tab: SimpleNamespace, shell: Shell) -> None:
    settings = shell.settings

    def upload_collection(
        zip_file,
        metadata_file,
        upload_title,
        collection_name,
        session,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's way to ask for a bar
    ):
        progress(0, desc="extracting and indexing")
        base = shell.resolve(session, collection_name)
        session, added = index_upload(
            session, zip_file, upload_title, base, metadata_file, settings
        )
        serve_files(added)
        message = (
            f"✅ Indexed **{len(added.index):,}** images as *{added.spec.title}*."
            + skip_note(added.index.manifest.get("skipped", []))
        )
        choices = collection_choices(shell.catalog, session, marked=True)
        return session, message, gr.Dropdown(choices=choices, value=added.name)

    uploaded = listen(
        tab.upload_button.click,
        upload_collection,
        [tab.upload_zip, tab.upload_meta, tab.upload_name, shell.collection, shell.session],
        [shell.session, tab.upload_status, shell.collection],
        api_name="upload_collection",
        concurrency_limit=1,
    )
    # the new collection is chosen: every tab follows it
    shell.refresh_after(uploaded.success, "select_uploaded_collection", api_visibility="private")

    def download_index(collection_name, session):
        current = shell.resolve(session, collection_name)
        return str(index_archive(current, sessions_root(settings) / "archives"))

    listen(
        tab.archive_button.click,
        download_index,
        [shell.collection, shell.session],
        tab.archive_file,
        api_name="download_index",
    )

    def push_hub(collection_name, repo, token, private, session):
        result = push_to_hub(shell.resolve(session, collection_name), repo, token, private)
        return f"✅ Pushed: {result}" if result.commits else f"✅ {result}"

    listen(
        tab.hub_button.click,
        push_hub,
        [shell.collection, tab.hub_repo, tab.hub_token, tab.hub_private, shell.session],
        tab.hub_status,
        api_name="push_to_hub",
    )
