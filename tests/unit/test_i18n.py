"""The interface's languages: every language has every text, and the browser's choice wins."""

import json
import re

from webapp.ui.i18n import I18N_DIR, LANGUAGES, language_of, t, text_in

PLACEHOLDERS = re.compile(r"[◀▶↩…#]|\(top k\)|\.zip|HF_TOKEN|-1")


def test_every_language_has_every_text_and_keeps_the_literals():
    english = json.loads((I18N_DIR / "en.json").read_text())
    for language in LANGUAGES:
        texts = json.loads((I18N_DIR / f"{language}.json").read_text())
        assert list(texts) == list(english), language
        for key, value in texts.items():
            assert value.strip(), (language, key)
            assert PLACEHOLDERS.findall(value) == PLACEHOLDERS.findall(english[key]), (
                language,
                key,
            )


def test_the_first_browser_language_we_have_is_chosen():
    assert language_of("it-IT,it;q=0.9,en;q=0.8") == "it"
    assert language_of("pt-BR, de;q=0.5") == "de"
    assert language_of("ja") == language_of(None) == "en"
    assert text_in("de", "tab_text") == "Textsuche"


def test_an_unknown_text_key_is_a_bug():
    import pytest

    with pytest.raises(KeyError, match="no interface text"):
        t("no_such_label")


def test_no_text_key_shadows_one_of_gradios_own():
    """A key named like a namespace of Gradio's own texts ("image", "file", "label", ...) shows
    as "[object Object]": the Tagging and Explain image boxes did."""
    from pathlib import Path

    import gradio

    assets = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"
    exported = next(assets.glob("en-*.js")).read_text().split("export{")[-1]
    namespaces = set(re.findall(r" as (\w+)", exported))
    assert {"image", "file", "label"} <= namespaces  # the way they are read still works
    english = json.loads((I18N_DIR / "en.json").read_text())
    assert not namespaces & set(english)
