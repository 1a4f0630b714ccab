"""The Milvus backend end to end on Milvus Lite (a file in a temporary folder): build, search
with every filter kind evaluated by Milvus, incremental update, delete, model refusal, and the
same ranking as the local flat index on the shipped Shapes collection."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retrieval.backbone import load_backbone, new_model, save_backbone
from retrieval.catalog import Catalog, CollectionSpec
from retrieval.cli.main import main
from retrieval.config import SHAPES_INDEX_DIR, Settings
from retrieval.doctor import diagnose
from retrieval.errors import BadInput, IndexMismatch, NotFound
from retrieval.index import MILVUS_MANIFEST, Index, build_index
from retrieval.milvus_store import (
    MilvusFailure,
    MilvusIndex,
    MilvusWhere,
    build_milvus_index,
    connect,
    copy_to_milvus,
    milvus_filter,
)
from retrieval.search import Filters, Searcher
from retrieval.stores import open_index, update_collection
from tests.helpers import make_collection
from webapp.api import create_api

ROOT = Path(__file__).resolve().parents[2]
QUOTED_ARTIST = 'O\'Brien "the Elder" \\ II'


def museum(root: Path) -> Path:
    """The eight-image test collection with values that need escaping, LIKE wildcards in titles,
    a row without a date, and tags."""
    folder = make_collection(root)
    with open(folder / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for number, row in enumerate(rows):
        row["tags"] = "; ".join(
            ["warm" if number < 4 else "cool", "round" if number % 2 else "it's"]
        )
    rows[0].update(artist=QUOTED_ARTIST, title="50% off")
    rows[1].update(title="500 offers")
    rows[2].update(title="snake_case", date="")
    rows[3].update(title="snakeXcase")
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """One Milvus Lite file for the module (its server starts once per file)."""
    cache = tmp_path_factory.mktemp("milvus-cache")
    return Settings(cache_dir=str(cache), milvus_uri=str(cache / "milvus.db"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory, micro_backbone, lite):
    """The same folder as a Milvus collection and as a local flat index."""
    root = tmp_path_factory.mktemp("milvus-pair")
    folder = museum(root / "images")
    milvus = build_milvus_index(
        folder, root / "shared", micro_backbone, lite.milvus_uri, progress=False, settings=lite
    )
    local = build_index(folder, root / "local", micro_backbone, "flat", progress=False)
    return milvus.index, local.index


def ids_matching(index: Index, filters: Filters) -> set[str]:
    return {item["id"] for item in index.items if filters.matches(item)}


def milvus_ids(index: MilvusIndex, expression: str) -> set[str]:
    rows = index.store.client.query(index.store.name, filter=expression, output_fields=["id"])
    return {row["id"] for row in rows}


def hit_ids(searcher: Searcher, **options) -> list[str]:
    return [hit.id for hit in searcher.text("a red circle", k=20, **options).hits]


FILTERS = {
    "artist (any case and spacing)": Filters(artist="  anna "),
    "artist with quotes and a backslash": Filters(artist=QUOTED_ARTIST.upper()),
    "date range": Filters(date_from=1550, date_to=1750),
    "date from only (an undated item never matches)": Filters(date_from=1500),
    "date to only": Filters(date_to=1600),
    "keyword, every word": Filters(keyword="Painting PALE circle"),
    "keyword with a literal %": Filters(keyword="50%"),
    "keyword with a literal _": Filters(keyword="snake_case"),
    "tags, all of them": Filters(tags=["WARM", "round"]),
    "tag with a quote": Filters(tags=["it's"]),
    "all kinds at once": Filters(artist="bruno", date_from=1500, keyword="a", tags=["cool"]),
}


@pytest.mark.parametrize("filters", FILTERS.values(), ids=FILTERS.keys())
def test_each_filter_is_a_milvus_expression_keeping_what_the_local_filter_keeps(pair, filters):
    milvus, local = pair
    allowed = milvus.allowed(filters)
    assert isinstance(allowed, MilvusWhere)
    expected = ids_matching(local, filters)
    assert 0 < len(expected) < len(local)  # each case really narrows the collection
    assert milvus_ids(milvus, allowed.expression) == expected


@pytest.mark.parametrize("filters", FILTERS.values(), ids=FILTERS.keys())
def test_filtered_searches_rank_as_the_local_index_does(pair, micro_backbone, filters):
    milvus, local = pair
    found = Searcher(milvus, micro_backbone).text("a red circle", k=5, filters=filters)
    wanted = Searcher(local, micro_backbone).text("a red circle", k=5, filters=filters)
    assert [hit.id for hit in found.hits] == [hit.id for hit in wanted.hits]
    assert np.allclose([h.score for h in found.hits], [h.score for h in wanted.hits], atol=1e-5)


def test_values_are_escaped_inside_the_expression():
    expression = milvus_filter(Filters(artist=QUOTED_ARTIST, keyword="50%_", tags=['a"b']))
    assert expression == (
        'artist == "o\'brien \\"the elder\\" \\\\ ii" and text like "%50\\\\%\\\\_%" '
        'and array_contains_all(tags, ["a\\"b"])'
    )
    assert milvus_filter(Filters()) == milvus_filter(Filters(keyword="  ")) == ""


def test_unfiltered_search_paging_and_similar_items_match_the_local_index(pair, micro_backbone):
    milvus, local = pair
    ours, theirs = Searcher(milvus, micro_backbone), Searcher(local, micro_backbone)
    assert hit_ids(ours) == hit_ids(theirs) and len(hit_ids(ours)) == 8
    assert hit_ids(ours, offset=3) == hit_ids(theirs, offset=3)
    similar = [hit.id for hit in ours.similar("red-circle", k=3).hits]
    assert similar == [hit.id for hit in theirs.similar("red-circle", k=3).hits]
    assert "red-circle" not in similar
    profile = ours.explanation(ours.text("a red circle", k=3), 3)["profile"]
    expected = theirs.explanation(theirs.text("a red circle", k=3), 3)["profile"]
    assert rounded(profile) == rounded(expected)  # float32 sums in another order: last digits


def rounded(value):
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def test_the_cli_indexes_updates_searches_and_drops_a_milvus_collection(
    tmp_path, micro_model_dir, monkeypatch, capsys
):
    """Add, change and delete files, change a metadata row: `update` embeds only the new and
    the changed file, deletes the removed one from Milvus and refreshes the changed row there."""
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))  # Milvus Lite: cache/milvus.db
    monkeypatch.delenv("SR_MILVUS_URI", raising=False)
    folder, out = museum(tmp_path / "images"), tmp_path / "index"
    model = ["--model", str(micro_model_dir), "--device", "cpu"]
    build = ["index", str(folder), "--out", str(out), *model, "--backend", "milvus"]
    assert main([*build, "--milvus-collection", "museum"]) == 0
    assert "8 items" in capsys.readouterr().out
    assert (out / MILVUS_MANIFEST).is_file() and not (out / "CURRENT").exists()
    assert (tmp_path / "cache" / "milvus.db").exists()
    before = open_index(out)
    kept = np.asarray(before.vectors[before.position("blue-circle")])

    (folder / "round" / "red_circle.png").unlink()
    Image.new("RGB", (50, 50), (0, 0, 0)).save(folder / "angular" / "green_square.png")
    Image.new("RGB", (30, 60), (9, 9, 9)).save(folder / "new.png")
    _edit_row(folder / "metadata.csv", "blue-circle", artist="Chiara")
    embedded = _spy_embedding(monkeypatch)
    assert main(["update", str(out), "--report", str(tmp_path / "report.json")]) == 0
    assert "1 added, 1 changed, 1 removed, 6 unchanged" in capsys.readouterr().out
    assert sorted(Path(p).name for p in embedded) == ["green_square.png", "new.png"]

    after = open_index(out)
    assert milvus_ids(after, 'id == "red-circle"') == set() and len(after) == 8
    assert milvus_ids(after, 'artist == "chiara"') == {"blue-circle"}
    assert np.array_equal(np.asarray(after.vectors[after.position("blue-circle")]), kept)
    search = ["search", "a red circle", "--index", str(out), "-k", "8", "--json"]
    assert main([*search, "--artist", "CHIARA"]) == 0
    assert [hit["id"] for hit in json.loads(capsys.readouterr().out)["hits"]] == ["blue-circle"]
    assert main(["info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["milvus"]["collection"] == "museum"

    assert main(["drop", str(out)]) == 0
    capsys.readouterr()
    client = connect(str(tmp_path / "cache" / "milvus.db"))
    assert not client.has_collection("museum")
    assert not any(name.startswith("museum") for name in client.list_collections())
    with pytest.raises(NotFound, match="no CURRENT"):
        Index.load(out)


def _edit_row(csv_path: Path, item_id: str, **changes) -> None:
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.update(changes if row["id"] == item_id else {})
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _spy_embedding(monkeypatch) -> list:
    import retrieval.index

    seen, real = [], retrieval.index.embed_files

    def spy(backbone, paths, *args, **kwargs):
        seen.extend(paths)
        return real(backbone, paths, *args, **kwargs)

    monkeypatch.setattr(retrieval.index, "embed_files", spy)
    return seen


def test_a_rebuild_fills_a_new_version_and_drops_the_old_one(tmp_path, micro_backbone, lite):
    folder = museum(tmp_path / "images")
    for _ in range(2):
        report = build_milvus_index(
            folder, tmp_path / "again", micro_backbone, lite.milvus_uri, progress=False
        )
    versions = [n for n in connect(lite.milvus_uri).list_collections() if n.startswith("again__")]
    assert versions == [report.index.store.target()] and len(report.index) == 8


def test_another_model_is_refused_naming_the_collection_and_both_models(
    pair, micro_model_dir, tmp_path, lite, capsys
):
    milvus, _ = pair
    torch_model, _, _ = new_model("ShapesCLIP-Tiny", device="cpu")
    wider = load_backbone(str(save_backbone(torch_model, "ShapesCLIP-Tiny", tmp_path / "tiny")))
    same_dim, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
    stranger = load_backbone(str(save_backbone(same_dim, "ShapesCLIP-Micro", tmp_path / "m2")))
    built_with = milvus.manifest["model_spec"]
    for model, reason in ((wider, "embeds into 128 dimensions"), (stranger, "different weights")):
        with pytest.raises(IndexMismatch, match=reason) as refused:
            open_index(milvus.directory, model, milvus_uri=lite.milvus_uri)
        message = str(refused.value)
        assert "Milvus collection 'shared'" in message
        assert built_with in message and model.spec in message
        with pytest.raises(IndexMismatch, match=reason):
            update_collection(milvus.directory, model, progress=False, settings=lite)
    search = ["search", "red", "--index", str(milvus.directory), "--model", str(tmp_path / "m2")]
    assert main(search) == 1
    assert "Milvus collection 'shared'" in capsys.readouterr().err


def test_a_folder_refuses_its_collection_once_another_model_rebuilt_it(
    tmp_path, micro_backbone, lite
):
    """Two folders naming one Milvus collection: the later build replaces it, and the earlier
    folder refuses it (other weights, then another dimension) instead of serving it."""
    folder = museum(tmp_path / "images")
    first = build_milvus_index(
        folder, tmp_path / "a" / "clash", micro_backbone, lite.milvus_uri, progress=False
    ).index
    same_dim, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
    stranger = load_backbone(str(save_backbone(same_dim, "ShapesCLIP-Micro", tmp_path / "m2")))
    torch_model, _, _ = new_model("ShapesCLIP-Tiny", device="cpu")
    wider = load_backbone(str(save_backbone(torch_model, "ShapesCLIP-Tiny", tmp_path / "tiny")))
    for model, reason in ((stranger, "holds vectors of .*m2"), (wider, "holds 128-d vectors")):
        build_milvus_index(folder, tmp_path / "b" / "clash", model, lite.milvus_uri, progress=False)
        with pytest.raises(IndexMismatch, match=f"collection 'clash' {reason}"):
            open_index(first.directory)


def test_a_folder_whose_collection_is_gone_says_where_it_looked(pair, tmp_path, micro_backbone):
    milvus, _ = pair
    elsewhere = str(tmp_path / "empty" / "milvus.db")
    with pytest.raises(NotFound, match="'shared', which Milvus at .*empty/milvus.db does not hold"):
        open_index(milvus.directory, micro_backbone, milvus_uri=elsewhere)


def test_doctor_checks_a_milvus_collection_and_names_one_it_cannot_reach(
    pair, micro_model_dir, tmp_path
):
    milvus, _ = pair
    entries = [
        {"name": name, "title": name, "index": str(milvus.directory), "model": str(micro_model_dir)}
        for name in ("served", "moved")
    ]
    (tmp_path / "collections.json").write_text(json.dumps({"collections": entries[:1]}))
    served = Settings(cache_dir=str(tmp_path), milvus_uri=milvus.store.uri)
    report = diagnose(served, tmp_path / "collections.json")
    assert not report.findings and report.healthy["served"].startswith("8 items"), report.text()

    elsewhere = Settings(cache_dir=str(tmp_path), milvus_uri=str(tmp_path / "none" / "milvus.db"))
    (tmp_path / "collections.json").write_text(json.dumps({"collections": entries[1:]}))
    (fault,) = diagnose(elsewhere, tmp_path / "collections.json").faults
    assert "the Milvus collection of" in fault.problem and "'shared'" in fault.problem
    assert "SR_MILVUS_URI" in fault.fix


def test_commands_for_local_indexes_say_so_on_a_milvus_folder(pair, capsys):
    milvus, _ = pair
    assert main(["duplicates", str(milvus.directory)]) == 1
    assert "living in Milvus (milvus.json)" in capsys.readouterr().err
    with pytest.raises(BadInput, match="without --backend milvus"):
        Index.load(milvus.directory)


def test_the_api_refuses_duplicates_of_a_milvus_collection_and_keeps_serving(pair, lite):
    milvus, _ = pair
    spec = CollectionSpec(name="milvus", title="m", index=str(milvus.directory))
    client = TestClient(create_api(Catalog([spec], lite), lite))
    refused = client.get("/api/collections/milvus/duplicates")
    assert refused.status_code == 400
    assert "keeps no local version: near-duplicate groups" in refused.json()["message"]
    assert client.get("/api/collections/milvus/search/text", params={"q": "a circle"}).is_success


def test_tags_stored_later_are_filterable_in_milvus(tmp_path, micro_backbone, lite):
    folder = museum(tmp_path / "images")
    index = build_milvus_index(folder, tmp_path / "tagged", micro_backbone, lite.milvus_uri).index
    tagged = index.update_metadata({"red-square": {"tags": [{"tag": "Crimson", "score": 0.9}]}})
    assert milvus_ids(tagged, tagged.allowed(Filters(tags=["crimson"])).expression) == {
        "red-square"
    }
    assert np.array_equal(
        np.asarray(tagged.vectors[tagged.position("red-square")]),
        np.asarray(index.vectors[index.position("red-square")]),
    )


def test_the_api_serves_a_collections_entry_that_lives_in_milvus(pair, lite):
    milvus, local = pair
    specs = [
        CollectionSpec(name=name, title=name, index=str(index.directory))
        for name, index in (("milvus", milvus), ("local", local))
    ]
    client = TestClient(create_api(Catalog(specs, lite), lite))
    params = {"q": "a red circle", "k": 5, "date_from": 1550, "tag": "cool"}
    answers = [client.get(f"/api/collections/{s.name}/search/text", params=params) for s in specs]
    assert all(answer.status_code == 200 for answer in answers)
    found, wanted = ([hit["id"] for hit in a.json()["hits"]] for a in answers)
    assert found == wanted and found
    thumb = client.get(answers[0].json()["hits"][0]["thumb_url"])
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"


def test_same_top_10_as_faiss_on_the_shipped_shapes_collection(tmp_path, lite):
    """The shipped vectors copied into Milvus (FLAT, inner product = cosine on unit vectors)
    rank every query as the local flat index does."""
    local = Index.load(SHAPES_INDEX_DIR)
    milvus = copy_to_milvus(local, tmp_path / "shapes", lite.milvus_uri, "shapes_copy")
    backbone = load_backbone(local.model_spec(), device="cpu")  # the model its vectors came from
    ours, theirs = Searcher(milvus, backbone), Searcher(local, backbone)
    queries = json.loads((ROOT / "collections.json").read_text())["collections"][0]["examples"]
    queries += ["a small blue star at the top", "two triangles", "a yellow square on the right"]
    for query in queries:
        found, wanted = ours.text(query, k=10), theirs.text(query, k=10)
        assert [hit.id for hit in found.hits] == [hit.id for hit in wanted.hits], query
        assert np.allclose([h.score for h in found.hits], [h.score for h in wanted.hits], atol=1e-5)
    item = local.items[0]["id"]
    assert [h.id for h in ours.similar(item, k=10).hits] == [
        h.id for h in theirs.similar(item, k=10).hits
    ]
    tags = Filters(tags=["red", "circle"])
    assert [h.id for h in ours.text("a shape", k=10, filters=tags).hits] == [
        h.id for h in theirs.text("a shape", k=10, filters=tags).hits
    ]


def test_missing_pymilvus_is_a_clear_error_and_never_needed_to_import(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # `import pymilvus` now fails
    with pytest.raises(MilvusFailure, match="pip install -r requirements-scale.txt"):
        connect(str(tmp_path / "none.db"))
    code = (
        "import sys; import retrieval.cli.main, retrieval.catalog, retrieval.milvus_store; "
        "assert 'pymilvus' not in sys.modules and 'milvus_lite' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)
