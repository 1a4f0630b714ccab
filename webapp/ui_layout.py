"""The components of the UI, laid out; `webapp.ui` and `webapp.ui_events` wire their events.

`build_layout` must run inside a `gr.Blocks` context; it returns every component by name.
"""

from types import SimpleNamespace

import gradio as gr
from PIL import Image

from retrieval.catalog import Catalog
from retrieval.config import Settings
from webapp import ui_logic as logic
from webapp.ui_upload import delete_session

GALLERY_COLUMNS = 6
EXPLAIN_METHODS = ["auto", "attention", "gradcam"]


def readable_image(**options) -> gr.Image:
    """A file-path gr.Image whose unreadable uploads become a plain message, not a stack trace."""
    component = gr.Image(type="filepath", **options)
    decode = component.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            name = getattr(payload, "orig_name", None) or "the uploaded file"
            raise gr.Error(
                f"{name}: not an image file that can be read ({error.__class__.__name__})"
            ) from error

    component.preprocess = preprocess  # an instance attribute: no subclass, no generated .pyi
    return component


def build_layout(catalog: Catalog, settings: Settings, start: str | None) -> SimpleNamespace:
    """Header, collection switcher, one tab per task and the detail panel on the right."""
    first = catalog.get(start) if start and catalog.status(start) is None else None
    methods = logic.composed_methods(first) if first else ["sum"]
    vocabulary_names, default_vocabulary = logic.vocabularies(first)
    session = gr.State(None, delete_callback=delete_session)
    selected_query = gr.State(None)
    gr.Markdown(
        "# Smart Retrieval\nSearch image collections by text, by image, or by an image plus "
        "a change in words. Click any image for details."
    )
    with gr.Row(equal_height=True):
        collection = gr.Dropdown(
            logic.collection_choices(catalog),
            value=start,
            label="Collection",
            scale=1,
            allow_custom_value=True,  # unknown names get our message, not a bare validation error
        )
        status = gr.Markdown(elem_id="collection-status")
    with gr.Accordion("All collections", open=False):
        overview = gr.Markdown()

    with gr.Row():
        with gr.Column(scale=3), gr.Tabs() as tabs:
            with gr.Tab("Gallery", id="gallery"):
                with gr.Row(equal_height=True):
                    prev_page = gr.Button("◀ Previous", size="sm")
                    page = gr.Number(1, label="Page", precision=0, minimum=1)
                    next_page = gr.Button("Next ▶", size="sm")
                    sample = gr.Button("Random sample", size="sm")
                page_info = gr.Markdown()
                browse_gallery = gr.Gallery(
                    label="Collection",
                    columns=GALLERY_COLUMNS,
                    allow_preview=False,
                    elem_id="browse-gallery",
                    height="auto",
                )
                with gr.Accordion("Items as JSON", open=False):
                    browse_hits = gr.JSON(label="Items")

            with gr.Tab("Text search", id="text"):
                with gr.Row(equal_height=True):
                    query = gr.Textbox(
                        label="Describe what you look for", scale=4, elem_id="text-query"
                    )
                    text_button = gr.Button(
                        "Search", variant="primary", scale=1, elem_id="text-search"
                    )
                examples = gr.Dataset(
                    components=[query], samples=[], label="Examples", type="values"
                )
                with gr.Row():
                    text_k = gr.Slider(1, settings.max_k, 12, step=1, label="Results (top k)")
                    text_min = gr.Slider(
                        -1, 1, -1, step=0.01, label="Minimum score (-1: no minimum)"
                    )
                with gr.Accordion("Filters", open=False), gr.Row():
                    artist = gr.Dropdown([], label="Artist", allow_custom_value=True)
                    date_from = gr.Number(None, label="Year from", precision=0)
                    date_to = gr.Number(None, label="Year to", precision=0)
                    keyword = gr.Textbox(label="Keyword in title or description")
                text_gallery = gr.Gallery(
                    label="Results",
                    columns=GALLERY_COLUMNS,
                    allow_preview=False,
                    elem_id="text-results",
                    height="auto",
                )
                with gr.Accordion("Results as JSON", open=False):
                    text_hits = gr.JSON(label="Hits")
                text_query = gr.State(None)

            with gr.Tab("Image search", id="image"):
                with gr.Row():
                    image_input = readable_image(
                        label="Query image",
                        sources=["upload", "clipboard", "webcam"],
                        height=260,
                    )
                    with gr.Column():
                        image_item = gr.Textbox(
                            label="…or an item of the collection (id)", elem_id="image-item"
                        )
                        image_pick = gr.Button("Pick a random item", size="sm")
                        image_k = gr.Slider(1, settings.max_k, 12, step=1, label="Results")
                        image_min = gr.Slider(-1, 1, -1, step=0.01, label="Minimum score")
                        image_button = gr.Button("Find similar", variant="primary")
                image_gallery = gr.Gallery(
                    label="Similar items",
                    columns=GALLERY_COLUMNS,
                    allow_preview=False,
                    elem_id="image-results",
                    height="auto",
                )
                with gr.Accordion("Results as JSON", open=False):
                    image_hits = gr.JSON(label="Hits")
                image_query = gr.State(None)

            with gr.Tab("Composed search", id="composed"):
                gr.Markdown(
                    "Start from a reference image and say what to change. Click a result "
                    "to make it the new reference and keep refining."
                )
                with gr.Row():
                    ref_image = readable_image(
                        label="Reference image",
                        sources=["upload", "clipboard", "webcam"],
                        height=260,
                    )
                    with gr.Column():
                        ref_item = gr.Textbox(
                            label="…or an item of the collection (id)", elem_id="ref-item"
                        )
                        ref_pick = gr.Button("Pick a random reference", size="sm")
                        ref_text = gr.Textbox(
                            label="Modification",
                            placeholder="e.g. make it red",
                            elem_id="ref-text",
                        )
                        method = gr.Dropdown(
                            methods, value=methods[0], label="Method", allow_custom_value=True
                        )
                        composed_k = gr.Slider(1, settings.max_k, 12, step=1, label="Results")
                        with gr.Row():
                            composed_button = gr.Button(
                                "Search", variant="primary", elem_id="composed-search"
                            )
                            back_button = gr.Button("↩ Step back")
                crumbs = gr.Markdown("No refinement steps yet.", elem_id="breadcrumbs")
                composed_gallery = gr.Gallery(
                    label="Results (click one to refine from it)",
                    columns=GALLERY_COLUMNS,
                    allow_preview=False,
                    elem_id="composed-results",
                    height="auto",
                )
                with gr.Accordion("Results as JSON", open=False):
                    composed_hits = gr.JSON(label="Hits")
                chain = gr.State([])
                composed_query = gr.State(None)

            with gr.Tab("Tagging", id="tags"):
                tags_available = logic.optional_module("retrieval.tags") is not None
                if not tags_available:
                    gr.Markdown("Tagging is not available: `retrieval.tags` is not installed.")
                with gr.Row(visible=tags_available):
                    tag_image_input = readable_image(
                        label="Image",
                        sources=["upload", "clipboard"],
                        height=260,
                    )
                    with gr.Column():
                        tag_item = gr.Textbox(
                            label="…or an item of the collection (id)", elem_id="tag-item"
                        )
                        vocabulary = gr.Dropdown(
                            vocabulary_names, value=default_vocabulary, label="Vocabulary"
                        )
                        tag_mode = gr.Radio(["single", "multi"], value="single", label="Mode")
                        tag_top_k = gr.Slider(1, 10, 3, step=1, label="Tags per group (single)")
                        tag_threshold = gr.Slider(0, 1, 0.1, step=0.01, label="Threshold (multi)")
                        tag_button = gr.Button("Tag", variant="primary", elem_id="tag-button")
                tag_label = gr.Label(
                    label="Tags", num_top_classes=20, visible=tags_available, elem_id="tag-label"
                )
                with gr.Accordion("Tags as JSON", open=False, visible=tags_available):
                    tag_json = gr.JSON(label="Tags")

            with gr.Tab("Explain", id="explain"):
                explain_available = logic.optional_module("retrieval.explain") is not None
                if not explain_available:
                    gr.Markdown("Heatmaps are not available: `retrieval.explain` is missing.")
                with gr.Row(visible=explain_available):
                    explain_image = readable_image(
                        label="Image",
                        sources=["upload", "clipboard"],
                        height=260,
                    )
                    with gr.Column():
                        explain_item = gr.Textbox(
                            label="…or an item of the collection (id)", elem_id="explain-item"
                        )
                        explain_text = gr.Textbox(
                            label="Explain against this text", elem_id="explain-text"
                        )
                        explain_method = gr.Radio(EXPLAIN_METHODS, value="auto", label="Method")
                        explain_opacity = gr.Slider(0, 1, 0.5, step=0.05, label="Opacity")
                        explain_button = gr.Button(
                            "Explain", variant="primary", elem_id="explain-button"
                        )
                explain_output = gr.Image(
                    label="Relevance heatmap",
                    interactive=False,
                    visible=explain_available,
                    elem_id="explain-output",
                )
                explain_note = gr.Markdown()

            with gr.Tab("Your collection", id="upload"):
                gr.Markdown(
                    f"Upload a .zip of images (at most {settings.max_zip_images:,} images, "
                    f"{settings.max_upload_mb} MB), optionally with a metadata CSV "
                    "(columns id, file, title, artist, date, description, url). It is "
                    "embedded with the selected collection's model and searchable in every "
                    "tab, for this browser session only."
                )
                with gr.Row():
                    upload_zip = gr.File(label="Images (.zip)", file_types=[".zip"])
                    upload_meta = gr.File(
                        label="Metadata (.csv or .jsonl, optional)",
                        file_types=[".csv", ".jsonl"],
                    )
                upload_name = gr.Textbox(label="Name", placeholder="my-photos")
                upload_button = gr.Button("Index my collection", variant="primary")
                upload_status = gr.Markdown()
                with gr.Row():
                    archive_button = gr.Button("Download the selected collection's index")
                    archive_file = gr.File(label="Index archive", interactive=False)
                with gr.Accordion(
                    "Push the selected collection to the Hugging Face Hub", open=False
                ):
                    hub_repo = gr.Textbox(label="Dataset repo (org/name)")
                    hub_token = gr.Textbox(
                        label="Token (empty: the app's HF_TOKEN)", type="password"
                    )
                    hub_private = gr.Checkbox(label="Private", value=True)
                    hub_button = gr.Button("Push")
                    hub_status = gr.Markdown()

        with gr.Column(scale=2, elem_id="detail-panel"):
            detail_image = gr.Image(label="Selected item", interactive=False, height=360)
            detail_card = gr.Markdown("Click an image to see its details.")
            selected_id = gr.Textbox(label="Item id", elem_id="selected-id")
            with gr.Row():
                similar_button = gr.Button("Find similar", size="sm", elem_id="find-similar")
                reference_button = gr.Button(
                    "Use as reference", size="sm", elem_id="use-as-reference"
                )
                why_button = gr.Button(
                    "Why this result?", size="sm", visible=explain_available, elem_id="why-button"
                )
            why_image = gr.Image(
                label="Why this result?", interactive=False, visible=False, elem_id="why-image"
            )
            why_note = gr.Markdown()

    return SimpleNamespace(**locals())
