"""A user's mistake is one line in the server log, without a traceback; a real fault keeps its
traceback (the log used to fill with tracebacks for every bad request)."""

import logging

import gradio as gr
import pytest
from fastapi.testclient import TestClient

from retrieval.catalog import Catalog
from retrieval.config import Settings
from retrieval.errors import BadInput
from webapp.api import create_api
from webapp.ui.common import guarded


def test_an_api_user_error_is_one_line_without_traceback(tmp_path, caplog):
    settings = Settings(cache_dir=str(tmp_path))
    client = TestClient(create_api(Catalog([], settings), settings))
    with caplog.at_level(logging.INFO):
        response = client.get("/api/collections/nowhere")
    assert response.status_code == 404
    lines = [
        r for r in caplog.records if r.name.startswith("webapp") and "nowhere" in r.getMessage()
    ]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "GET /api/collections/nowhere -> 404" in lines[0].getMessage()


def test_a_ui_user_error_is_one_line_and_a_fault_keeps_its_traceback(caplog):
    @guarded
    def search(text):
        if not text:
            raise BadInput("the text query is empty")
        raise ZeroDivisionError("a bug")

    with caplog.at_level(logging.INFO), pytest.raises(gr.Error) as error:
        search("")
    assert error.value.print_exception is False  # Gradio prints no traceback for it
    records = [r for r in caplog.records if "empty" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is None
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(gr.Error):
        search("x")
    assert any(r.exc_info for r in caplog.records)  # a real fault: logged with its traceback
