"""The catalog's exact rules: how collections.json paths resolve, which runtime serves, what a
failed collection says (once, remembered) and what adding or removing does. Found by mutation
testing (bench/mutation_test.py): each test fails for a one-line change that the broader catalog
tests let through."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from retrieval import catalog as catalog_module
from retrieval.catalog import (
    Catalog,
    CollectionSpec,
    CollectionUnavailable,
    open_collection,
    serving_runtime,
)
from retrieval.config import ROOT, Settings
from retrieval.errors import BadInput, NotFound
from retrieval.index import build_index
from tests.helpers import make_collection


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, micro_backbone):
    root = tmp_path_factory.mktemp("catalog-rules")
    make_collection(root / "images")
    build_index(root / "images", root / "index", micro_backbone, progress=False)
    return root / "index"


def test_paths_resolve_against_the_file_and_names_stay_names(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    raw = {
        "name": "a", "title": "A", "index": "idx", "combiner": "c", "phi": "p",
        "model": "ViT-B-32/openai", "unknown": "ignored", "examples": ["x"],
    }  # fmt: skip
    spec = CollectionSpec.from_dict(raw, tmp_path)
    assert spec.index == str(tmp_path / "idx") and spec.combiner == str(tmp_path / "c")
    assert spec.phi == str(tmp_path / "p") and spec.model == "ViT-B-32/openai"
    assert spec.examples == ["x"] and spec.runtime == "torch" and spec.description == ""
    local_model = CollectionSpec.from_dict({**raw, "model": "models/mine"}, tmp_path)
    assert local_model.model == str(tmp_path / "models" / "mine")
    hub = {"index": "hf-hub:org/index", "combiner": None, "phi": "hf-hub:org/phi@v1"}
    hub_index = CollectionSpec.from_dict({**raw, **hub}, tmp_path)
    assert (hub_index.index, hub_index.combiner, hub_index.phi) == tuple(hub.values())


def test_the_shipped_file_serves_shapes_from_precomputed():
    specs = Catalog.from_file(ROOT / "collections.json").specs
    assert list(specs)[0] == "shapes"
    assert specs["shapes"].index == str(ROOT / "precomputed" / "shapes" / "index")
    assert specs["shapes"].combiner == str(ROOT / "precomputed" / "shapes-combiner")


@pytest.mark.parametrize(
    "server,own,device,expected",
    [
        ("", "onnx-int8", "cpu", "onnx-int8"), ("", "onnx-int8", "cuda", "torch"),
        ("onnx", "onnx-int8", "cpu", "onnx"), ("onnx", "torch", "cuda", "onnx"),
        ("", "torch", "cpu", "torch"),
    ],
)  # fmt: skip
def test_which_runtime_serves(server, own, device, expected):
    spec = CollectionSpec(name="a", title="A", index="x", runtime=own)
    assert serving_runtime(spec, Settings(runtime=server, device=device)) == expected


def test_unknown_runtimes_name_where_they_were_set():
    spec = CollectionSpec(name="a", title="A", index="x", runtime="fast")
    choices = "choose one of torch, onnx, onnx-int8"
    with pytest.raises(BadInput) as error:
        serving_runtime(replace(spec, runtime="torch"), Settings(runtime="quick"))
    assert str(error.value) == f"unknown SR_RUNTIME 'quick'; {choices}"
    with pytest.raises(BadInput) as error:
        serving_runtime(spec, Settings(device="cpu"))
    assert str(error.value) == f"unknown \"runtime\" of collection 'a' 'fast'; {choices}"


def test_a_collection_opens_with_the_settings_it_is_given(index_dir, micro_model_dir):
    settings = Settings(max_k=7, max_image_mb=3, max_image_pixels=1234, device="cpu")
    spec = CollectionSpec(name="a", title="A", index=str(index_dir), model=str(micro_model_dir))
    opened = open_collection(spec, settings)
    assert opened.name == "a" and opened.spec is spec and opened.searcher.max_k == 7
    assert opened.backbone.image_limits == settings.image_limits
    assert opened.backbone.preprocessing == opened.index.manifest["preprocessing"]
    assert opened.searcher.index is opened.index and opened.searcher.backbone is opened.backbone
    assert set(opened.searcher.composers) == {"sum"}
    recorded = open_collection(replace(spec, model=None), settings)  # the model the index names
    assert recorded.backbone.spec == opened.index.model_spec()


def test_a_failure_is_remembered_named_and_does_not_load_again(monkeypatch):
    calls = []

    def broken(spec, settings):
        calls.append(spec.name)
        raise OSError()

    monkeypatch.setattr(catalog_module, "open_collection", broken)
    catalog = Catalog([CollectionSpec(name="a", title="A", index="x")])
    assert catalog.state("a") == "not loaded"
    for _ in range(2):
        with pytest.raises(CollectionUnavailable) as error:
            catalog.get("a")
        assert str(error.value) == "a: OSError" and error.value.status_code == 503
    assert (
        calls == ["a"] and catalog.state("a") == "OSError" and catalog.status("a") == "a: OSError"
    )
    with pytest.raises(NotFound) as error:
        catalog.get("b")
    assert str(error.value) == "no collection 'b'; available: a"


def test_errors_outside_the_expected_kinds_are_not_swallowed(monkeypatch):
    monkeypatch.setattr(catalog_module, "open_collection", lambda spec, settings: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        Catalog([CollectionSpec(name="a", title="A", index="x")]).get("a")


def test_adding_replaces_a_failure_and_removing_forgets_everything(
    index_dir, micro_model_dir, monkeypatch
):
    settings = Settings(device="cpu")
    spec = CollectionSpec(name="a", title="A", index=str(index_dir), model=str(micro_model_dir))
    good = open_collection(spec, settings)
    catalog = Catalog([replace(spec, index="nowhere")], settings)
    assert catalog.status("a").startswith("a: ")
    catalog.add(good)
    assert (
        catalog.get("a") is good and catalog.state("a") == "loaded" and catalog.status("a") is None
    )
    assert catalog.specs["a"] is spec and catalog.names() == ["a"]
    catalog.remove("a")
    assert catalog.names() == [] and catalog.state("a") == "not loaded"
    with pytest.raises(NotFound) as error:
        catalog.remove("a")
    assert str(error.value) == "no collection 'a'"


def test_a_catalog_file_lists_collections_in_order(tmp_path, index_dir):
    path = tmp_path / "sub" / "collections.json"
    path.parent.mkdir()
    entries = [{"name": n, "title": n.upper(), "index": str(index_dir)} for n in ("b", "a", "c")]
    path.write_text(json.dumps({"collections": entries}))
    assert Catalog.from_file(path).names() == ["b", "a", "c"]
    assert Catalog.from_file(settings=Settings(collections_file=str(path))).names() == [
        "b",
        "a",
        "c",
    ]


def test_removing_a_collection_that_failed_forgets_its_failure():
    catalog = Catalog([CollectionSpec(name="a", title="A", index="nowhere")])
    assert catalog.status("a").startswith("a: ")
    catalog.remove("a")
    assert catalog.state("a") == "not loaded"


def test_an_index_records_how_its_images_were_preprocessed(
    tmp_path, micro_backbone, micro_model_dir
):
    from retrieval.index import write_version
    from tests.unit.test_index_rules import manifest

    recorded = manifest(
        model_spec=str(micro_model_dir), dim=micro_backbone.dim, preprocessing="squarepad"
    )
    write_version(tmp_path / "index", recorded, [{"id": "a"}], micro_backbone.encode_texts(["a"]))
    opened = open_collection(CollectionSpec(name="a", title="A", index=str(tmp_path / "index")))
    assert opened.backbone.preprocessing == "squarepad"


def test_onnx_exports_go_to_the_servers_cache_folder(index_dir, micro_model_dir, tmp_path):
    settings = Settings(device="cpu", runtime="onnx", cache_dir=str(tmp_path / "cache"))
    spec = CollectionSpec(name="a", title="A", index=str(index_dir), model=str(micro_model_dir))
    assert open_collection(spec, settings).backbone.runtime == "onnx"
    assert list((tmp_path / "cache" / "onnx").glob("*/export.json"))


def into_hub_cache(cache, repo_type: str, repo: str, folder) -> None:
    """`folder` as huggingface_hub's cache holds a downloaded repo of `repo_type`."""
    import shutil

    commit = "c" * 40
    repo_cache = cache / f"{repo_type}s--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_cache / "snapshots" / commit)
    (repo_cache / "refs").mkdir(parents=True)
    (repo_cache / "refs" / "main").write_text(commit)


def test_a_collection_on_the_hub_loads_offline_from_the_cache(tmp_path, monkeypatch):
    """The index is a dataset repo, the model and the composed-search weights model repos: each
    is looked up under its own kind (the Shapes artifacts stand in for published ones)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    shapes = ROOT / "precomputed"
    into_hub_cache(cache, "dataset", "museum/shapes-index", shapes / "shapes" / "index")
    into_hub_cache(cache, "model", "museum/shapes-combiner", shapes / "shapes-combiner")
    into_hub_cache(cache, "model", "museum/shapes-phi", shapes / "shapes-phi")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    spec = CollectionSpec(
        name="hub", title="Hub", index="hf-hub:museum/shapes-index", model=str(shapes / "shapes-clip-small"),
        combiner="hf-hub:museum/shapes-combiner", phi="hf-hub:museum/shapes-phi",
    )  # fmt: skip
    opened = open_collection(spec, Settings(device="cpu", cache_dir=str(tmp_path / "cache")))
    assert len(opened.index) == 1024 and set(opened.searcher.composers) == {
        "sum",
        "combiner",
        "zero-shot",
    }
    reference = opened.index.items[0]["id"]
    ranked = {
        method: [
            hit.id
            for hit in opened.searcher.composed(reference, "make it blue", method=method, k=5).hits
        ]
        for method in ("sum", "combiner", "zero-shot")
    }
    assert len({tuple(ids) for ids in ranked.values()}) == 3  # three different methods answer
