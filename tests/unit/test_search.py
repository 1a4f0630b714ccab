import io

import numpy as np
import pytest
import torch

from retrieval.errors import BadInput, NotFound
from retrieval.index import build_index
from retrieval.search import Filters, Searcher, item_year
from tests.helpers import draw_scene, make_collection


@pytest.fixture(scope="module")
def searcher(tmp_path_factory, micro_backbone):
    root = tmp_path_factory.mktemp("search")
    make_collection(root / "images")
    index = build_index(root / "images", root / "index", micro_backbone, progress=False).index
    return Searcher(index, micro_backbone)


def test_text_search_ranks_by_cosine(searcher):
    result = searcher.text("a red circle", k=8)
    query = searcher.backbone.encode_texts(["a red circle"])[0]
    expected = np.sort(searcher.index.vectors @ query)[::-1]
    assert np.allclose([hit.score for hit in result.hits], expected, atol=1e-5)
    assert [hit.rank for hit in result.hits] == list(range(1, 9))
    assert result.hits[0].item["title"]


def test_paging_is_a_window_on_one_ranking(searcher):
    full = [hit.id for hit in searcher.text("blue", k=8).hits]
    page = searcher.text("blue", k=3, offset=3)
    assert [hit.id for hit in page.hits] == full[3:6]
    assert page.hits[0].rank == 4


def test_min_score_threshold(searcher):
    scores = [hit.score for hit in searcher.text("green", k=8).hits]
    cut = scores[3]
    result = searcher.text("green", k=8, min_score=cut)
    assert all(hit.score >= cut for hit in result.hits) and len(result.hits) == 4


def test_image_search_accepts_path_bytes_and_pil(searcher, tmp_path):
    image = draw_scene("red", "circle")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path = tmp_path / "q.png"
    image.save(path)
    by_pil = searcher.image(image, k=3)
    assert [h.id for h in searcher.image(buffer.getvalue(), k=3).hits] == [
        h.id for h in by_pil.hits
    ]
    assert [h.id for h in searcher.image(path, k=3).hits] == [h.id for h in by_pil.hits]
    with pytest.raises(BadInput):
        searcher.image(b"not an image", k=3)


def test_similar_excludes_the_item_itself(searcher):
    result = searcher.similar("red-circle", k=7)
    ids = [hit.id for hit in result.hits]
    assert "red-circle" not in ids and len(ids) == 7
    with pytest.raises(NotFound):
        searcher.similar("no-such-item")


def test_filters(searcher):
    anna = searcher.text("a shape", k=8, filters=Filters(artist="anna"))
    assert anna.hits and all(hit.item["artist"] == "Anna" for hit in anna.hits)
    dated = searcher.text("a shape", k=8, filters=Filters(date_from=1600, date_to=1700))
    assert {item_year(hit.item) for hit in dated.hits} <= set(range(1600, 1701)) and dated.hits
    keyword = searcher.text("a shape", k=8, filters=Filters(keyword="yellow"))
    assert {hit.id for hit in keyword.hits} == {"yellow-circle", "yellow-square"}
    assert searcher.text("a shape", filters=Filters(artist="Nobody")).hits == []


def test_composed_sum_excludes_reference_and_combines(searcher):
    result = searcher.composed("red-circle", "make it blue", method="sum", k=7)
    assert "red-circle" not in [hit.id for hit in result.hits]
    reference = searcher.item_vector("red-circle")
    text = searcher.backbone.encode_texts(["make it blue"])[0]
    query = (reference + text) / np.linalg.norm(reference + text)
    expected = np.sort(
        np.delete(searcher.index.vectors @ query, searcher.index.position("red-circle"))
    )[::-1]
    assert np.allclose([hit.score for hit in result.hits], expected[:7], atol=1e-5)
    with pytest.raises(BadInput, match="not available"):
        searcher.composed("red-circle", "blue", method="combiner")


def test_custom_composer_is_used(searcher):
    def text_only(backbone, image_features, texts):
        return torch.from_numpy(backbone.encode_texts(texts))

    plugged = Searcher(searcher.index, searcher.backbone, {"text-only": text_only})
    composed = plugged.composed("red-circle", "a yellow square", method="text-only", k=3)
    plain = [hit.id for hit in plugged.text("a yellow square", k=4).hits if hit.id != "red-circle"][
        :3
    ]
    assert [hit.id for hit in composed.hits] == plain


def test_bad_queries(searcher):
    with pytest.raises(BadInput, match="empty"):
        searcher.text("   ")
    with pytest.raises(BadInput, match="k must"):
        searcher.text("red", k=0)
    with pytest.raises(BadInput, match="offset"):
        searcher.text("red", offset=-1)
    long = searcher.text("red " * 60, k=1)
    assert any("truncated" in note for note in long.notes)
