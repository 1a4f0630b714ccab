"""Interface text in English, Italian, French, German and Spanish, chosen by the browser's language.

The strings live in `assets/i18n/<language>.json`, one flat file per language with the same keys.
Labels go through `t(key)`; Gradio translates them in the browser. Gradio 6 only switches to the
languages its own bundle ships (Italian is not among them), so `CHOOSE_LANGUAGE` sets the
browser's first language we have as the page starts. Messages the server writes
(results, warnings) stay in English, and so do example queries: the shipped CLIP models read
English only.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import gradio as gr
from gradio.i18n import I18nData

I18N_DIR = Path(__file__).resolve().parents[2] / "assets" / "i18n"
LANGUAGES = ("en", "it", "fr", "de", "es")


@cache
def translations() -> gr.I18n:
    return gr.I18n(
        **{lang: json.loads((I18N_DIR / f"{lang}.json").read_text()) for lang in LANGUAGES}
    )


def language_of(accept_language: str | None) -> str:
    """The first of the browser's languages (an Accept-Language header) that we have."""
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower().split("-")[0]
        if tag in LANGUAGES:
            return tag
    return "en"


def text_in(language: str, key: str) -> str:
    return translations().translations[language][key]


def wire_tab_labels(demo: gr.Blocks, tabs: dict[str, gr.Tab]) -> None:
    """Tab labels in the browser's language, set by the server on load: Gradio translates a tab's
    label once, when it first draws it, which can be before `CHOOSE_LANGUAGE` has run."""

    def label_tabs(request: gr.Request):
        language = language_of(request.headers.get("accept-language") if request else None)
        return tuple(gr.Tab(label=text_in(language, f"tab_{tab_id}")) for tab_id in tabs)

    demo.load(
        label_tabs,
        None,
        list(tabs.values()),
        api_name="label_tabs",
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )


def t(key: str) -> I18nData:
    """A label Gradio shows in the browser's language (an unknown key is a bug, so it raises)."""
    if key not in translations().translations["en"]:
        raise KeyError(f"no interface text {key!r} in {I18N_DIR / 'en.json'}")
    return translations()(key)


# A <head> script: Gradio's locale store lives in its `core` module, and importing that URL again
# yields the same module, whose changeLocale sets it. It must run between Gradio's own choice
# (made just before it sets window.__gradio_session_hash__) and the first render of the tabs,
# whose labels are translated once, when they mount.
CHOOSE_LANGUAGE = """<script>
(() => {
  const ours = __LANGUAGES__;
  const wanted = (navigator.languages || [navigator.language])
    .map((tag) => tag.toLowerCase().split('-')[0]).find((tag) => ours.includes(tag));
  if (!wanted || wanted === 'en') return;
  const started = Date.now();
  const poll = setInterval(() => {
    if (Date.now() - started > 30000) return clearInterval(poll);
    if (window.__gradio_session_hash__ === undefined) return;
    const core = performance.getEntriesByType('resource').map((entry) => entry.name)
      .find((name) => /\\/assets\\/core-[^/]+\\.js$/.test(name));
    clearInterval(poll);
    if (core) import(core).then((module) => module.changeLocale && module.changeLocale(wanted));
  }, 5);
})();
</script>""".replace("__LANGUAGES__", json.dumps(list(LANGUAGES)))
