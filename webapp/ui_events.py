"""Events of the search tabs (text, image, composed), the detail actions and the tool tabs.

Each handler is a thin shell over `webapp.ui_logic`; `guarded` turns the errors a user can cause
into a message box, so a bad input never breaks the page.
"""

import functools
import logging
from types import SimpleNamespace

import gradio as gr

from retrieval.catalog import Catalog
from retrieval.config import Settings
from retrieval.errors import RetrievalError
from webapp import ui_logic as logic
from webapp.ui_upload import index_archive, index_upload, push_to_hub, sessions_root

log = logging.getLogger(__name__)


def guarded(fn):
    """Errors a user can cause become a message box; anything else is logged, never a crash."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except RetrievalError as error:
            raise gr.Error(str(error), title=type(error).__name__) from error
        except Exception as error:
            log.exception("UI event %s failed", fn.__name__)
            raise gr.Error(f"Something went wrong: {type(error).__name__}: {error}") from error

    return wrapper


def warn(notes: list[str]) -> None:
    for note in notes:
        gr.Warning(note)


def wire_searches(ui: SimpleNamespace, resolve, item_details) -> None:
    """Text, image and composed search, plus "find similar" / "use as reference" / "why"."""
    session, query = ui.session, ui.query

    # -- text search -----------------------------------------------------------------------
    @guarded
    def text_search(
        collection_name, text, k, min_score, artist_name, year_from, year_to, word, session
    ):
        filters = logic.make_filters(artist_name, year_from, year_to, word)
        gallery, hits, notes = logic.text_search(
            resolve(session, collection_name), text, k, min_score, filters
        )
        warn(notes)
        return gallery, hits, {"type": "text", "text": text.strip()}

    text_inputs = [
        ui.collection,
        query,
        ui.text_k,
        ui.text_min,
        ui.artist,
        ui.date_from,
        ui.date_to,
        ui.keyword,
        session,
    ]
    text_outputs = [ui.text_gallery, ui.text_hits, ui.text_query]
    ui.text_button.click(text_search, text_inputs, text_outputs, api_name="text_search")
    query.submit(
        text_search,
        text_inputs,
        text_outputs,
        api_name="text_search_submit",
        api_visibility="private",
    )
    ui.examples.click(
        lambda sample_values: sample_values[0],
        ui.examples,
        query,
        api_name="use_example",
        api_visibility="private",
    )

    # -- image search ----------------------------------------------------------------------
    @guarded
    def image_search(collection_name, image, item_id, k, min_score, session):
        current = resolve(session, collection_name)
        gallery, hits, notes = logic.image_search(current, image, item_id, k, min_score)
        warn(notes)
        item_id = (item_id or "").strip()
        query_used = (
            {"type": "item", "id": item_id} if item_id else {"type": "image", "image": image}
        )
        return gallery, hits, query_used

    image_outputs = [ui.image_gallery, ui.image_hits, ui.image_query]
    ui.image_button.click(
        image_search,
        [ui.collection, ui.image_input, ui.image_item, ui.image_k, ui.image_min, session],
        image_outputs,
        api_name="image_search",
    )
    for picture, item_box, api in (
        (ui.image_input, ui.image_item, "clear_image_item"),
        (ui.ref_image, ui.ref_item, "clear_reference_item"),
    ):
        picture.upload(lambda _: "", picture, item_box, api_name=api, api_visibility="private")

    @guarded
    def pick_random(collection_name, session):
        _, hits = logic.random_sample(resolve(session, collection_name), 1)
        item_id = hits[0]["id"]
        return str(resolve(session, collection_name).index.image_path(item_id)), item_id

    ui.image_pick.click(
        pick_random,
        [ui.collection, session],
        [ui.image_input, ui.image_item],
        api_name="pick_random_image",
        api_visibility="private",
    )

    # -- composed search -------------------------------------------------------------------
    @guarded
    def composed_search(collection_name, image, item_id, text, method_name, k, steps, session):
        current = resolve(session, collection_name)
        gallery, hits, notes, vector = logic.composed_search(
            current, image, item_id, text, method_name, k
        )
        warn(notes)
        item_id = (item_id or "").strip() or None
        title = logic.reference_title(current, item_id)
        steps = logic.push_step(steps, item_id, image, title, text, method_name, hits)
        query_used = {"type": "vector", "vector": vector}
        return gallery, hits, steps, logic.breadcrumbs(steps), query_used

    ui.composed_button.click(
        composed_search,
        [
            ui.collection,
            ui.ref_image,
            ui.ref_item,
            ui.ref_text,
            ui.method,
            ui.composed_k,
            ui.chain,
            session,
        ],
        [ui.composed_gallery, ui.composed_hits, ui.chain, ui.crumbs, ui.composed_query],
        api_name="composed_search",
    )

    @guarded
    def composed_back(collection_name, steps, session):
        current = resolve(session, collection_name)
        steps, last, hits = logic.step_back(steps)
        image = str(current.index.image_path(last["id"])) if last["id"] else last["image"]
        gallery = logic.to_gallery(current, hits)
        return (
            image,
            last["id"] or "",
            last["text"],
            last["method"],
            gallery,
            hits,
            steps,
            logic.breadcrumbs(steps, last["title"]),
        )

    ui.back_button.click(
        composed_back,
        [ui.collection, ui.chain, session],
        [
            ui.ref_image,
            ui.ref_item,
            ui.ref_text,
            ui.method,
            ui.composed_gallery,
            ui.composed_hits,
            ui.chain,
            ui.crumbs,
        ],
        api_name="composed_back",
    )

    @guarded
    def refine_from(hits, collection_name, steps, session, query_used, evt: gr.SelectData):
        if not hits or evt.index is None or evt.index >= len(hits):
            raise gr.Error("that result is no longer shown; search again")
        item_id = hits[evt.index]["id"]
        current = resolve(session, collection_name)
        image, card = logic.item_details(current, item_id)
        crumb = logic.breadcrumbs(steps, logic.reference_title(current, item_id))
        return image, item_id, "", crumb, image, card, item_id, query_used

    ui.composed_gallery.select(
        refine_from,
        [ui.composed_hits, ui.collection, ui.chain, session, ui.composed_query],
        [
            ui.ref_image,
            ui.ref_item,
            ui.ref_text,
            ui.crumbs,
            ui.detail_image,
            ui.detail_card,
            ui.selected_id,
            ui.selected_query,
        ],
        api_name="refine_from_result",
        api_visibility="private",
    )

    @guarded
    def pick_reference(collection_name, session):
        image, item_id = pick_random(collection_name, session)
        title = logic.reference_title(resolve(session, collection_name), item_id)
        return image, item_id, [], logic.breadcrumbs([], title)

    ui.ref_pick.click(
        pick_reference,
        [ui.collection, session],
        [ui.ref_image, ui.ref_item, ui.chain, ui.crumbs],
        api_name="pick_random_reference",
        api_visibility="private",
    )

    # -- detail actions --------------------------------------------------------------------
    @guarded
    def find_similar(collection_name, item_id, k, session):
        current = resolve(session, collection_name)
        gallery, hits, notes = logic.image_search(current, None, item_id, k)
        warn(notes)
        image = str(current.index.image_path(item_id.strip()))
        query_used = {"type": "item", "id": item_id.strip()}
        return gr.Tabs(selected="image"), image, item_id.strip(), gallery, hits, query_used

    ui.similar_button.click(
        find_similar,
        [ui.collection, ui.selected_id, ui.image_k, session],
        [ui.tabs, ui.image_input, ui.image_item, ui.image_gallery, ui.image_hits, ui.image_query],
        api_name="find_similar",
        api_visibility="private",
    )

    @guarded
    def use_as_reference(collection_name, item_id, session):
        current = resolve(session, collection_name)
        image, _ = logic.item_details(current, item_id)
        title = logic.reference_title(current, item_id.strip())
        return (
            gr.Tabs(selected="composed"),
            image,
            item_id.strip(),
            [],
            logic.breadcrumbs([], title),
            [],
            [],
        )

    ui.reference_button.click(
        use_as_reference,
        [ui.collection, ui.selected_id, session],
        [
            ui.tabs,
            ui.ref_image,
            ui.ref_item,
            ui.chain,
            ui.crumbs,
            ui.composed_gallery,
            ui.composed_hits,
        ],
        api_name="use_as_reference",
        api_visibility="private",
    )

    @guarded
    def why_this_result(collection_name, item_id, query_used, session):
        current = resolve(session, collection_name)
        query_value = logic.explain_query(current, query_used)
        overlay, note = logic.explain(current, None, item_id, query_value)
        return gr.Image(overlay, visible=True), note

    ui.why_button.click(
        why_this_result,
        [ui.collection, ui.selected_id, ui.selected_query, session],
        [ui.why_image, ui.why_note],
        api_name="why_this_result",
        api_visibility="private",
    )


def wire_tools(
    ui: SimpleNamespace, resolve, catalog: Catalog, settings: Settings, serve_files
) -> None:
    """Tagging, heatmaps and the session's own collections."""
    session = ui.session

    # -- tagging and explanations ----------------------------------------------------------
    @guarded
    def tag_image(
        collection_name, image, item_id, vocabulary_name, mode, top_k, threshold, session
    ):
        found = logic.tag(
            resolve(session, collection_name),
            image,
            item_id,
            vocabulary_name,
            mode,
            top_k,
            threshold if mode == "multi" else None,
        )
        if not found:
            gr.Warning("no tag reached the threshold; lower it")
        return {t["tag"]: t["score"] for t in found}, found

    ui.tag_button.click(
        tag_image,
        [
            ui.collection,
            ui.tag_image_input,
            ui.tag_item,
            ui.vocabulary,
            ui.tag_mode,
            ui.tag_top_k,
            ui.tag_threshold,
            session,
        ],
        [ui.tag_label, ui.tag_json],
        api_name="tag_image",
    )

    @guarded
    def explain_image_fn(collection_name, image, item_id, text, method_name, opacity, session):
        return logic.explain(
            resolve(session, collection_name), image, item_id, text or "", method_name, opacity
        )

    ui.explain_button.click(
        explain_image_fn,
        [
            ui.collection,
            ui.explain_image,
            ui.explain_item,
            ui.explain_text,
            ui.explain_method,
            ui.explain_opacity,
            session,
        ],
        [ui.explain_output, ui.explain_note],
        api_name="explain",
    )

    # -- your collection -------------------------------------------------------------------
    @guarded
    def upload_collection(
        zip_file,
        metadata_file,
        upload_title,
        collection_name,
        session,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's way to ask for a bar
    ):
        progress(0, desc="extracting and indexing")
        base = resolve(session, collection_name)
        session, added = index_upload(
            session, zip_file, upload_title, base, metadata_file, settings
        )
        serve_files(added)
        message = f"✅ Indexed **{len(added.index):,}** images as *{added.spec.title}*."
        choices = logic.collection_choices(catalog, session)
        return session, message, gr.Dropdown(choices=choices, value=added.name)

    ui.upload_button.click(
        upload_collection,
        [ui.upload_zip, ui.upload_meta, ui.upload_name, ui.collection, session],
        [session, ui.upload_status, ui.collection],
        api_name="upload_collection",
        concurrency_limit=1,
    )

    @guarded
    def download_index(collection_name, session):
        current = resolve(session, collection_name)
        out_dir = sessions_root(settings) / "archives"
        return str(index_archive(current, out_dir))

    ui.archive_button.click(
        download_index, [ui.collection, session], ui.archive_file, api_name="download_index"
    )

    @guarded
    def push_hub(collection_name, repo, token, private, session):
        url = push_to_hub(resolve(session, collection_name), repo, token, private)
        return f"✅ Pushed: {url}"

    ui.hub_button.click(
        push_hub,
        [ui.collection, ui.hub_repo, ui.hub_token, ui.hub_private, session],
        ui.hub_status,
        api_name="push_to_hub",
    )
