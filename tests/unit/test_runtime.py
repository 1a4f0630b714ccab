"""ONNX Runtime towers: same embeddings as PyTorch, exported once per weights, and an index and
queries from different runtimes meet only when they agree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval import backbone as backbone_module
from retrieval.backbone import load_backbone, new_model, save_backbone
from retrieval.errors import BadInput, IndexMismatch
from retrieval.explain import explain
from retrieval.index import Index, build_index, update_index
from retrieval.runtime import MIN_AGREEMENT, combined_agreement
from retrieval.search import Searcher
from tests.helpers import COLOURS, draw_scene, make_collection

TEXTS = ["a red circle", "a large blue square on the left", "two yellow triangles", "green"]


def scenes() -> list:
    return [
        draw_scene(colour, shape, jitter=n % 3)
        for n, colour in enumerate(COLOURS)
        for shape in ("circle", "square")
    ]


def cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return (first * second).sum(axis=1)


@pytest.mark.parametrize(("runtime", "least"), [("onnx", 0.999), ("onnx-int8", 0.98)])
def test_onnx_towers_give_pytorchs_embeddings(micro_model_dir, tmp_path, runtime, least):
    reference = load_backbone(str(micro_model_dir), device="cpu")
    served = load_backbone(str(micro_model_dir), device="cpu", runtime=runtime, cache_dir=tmp_path)
    assert served.runtime == runtime and reference.runtime == "torch"
    for batch in (scenes()[:1], scenes()):  # batch 1 and 8: the batch axis is dynamic
        assert cosines(served.encode_images(batch), reference.encode_images(batch)).min() >= least
    texts = served.encode_texts(TEXTS)
    assert cosines(texts, reference.encode_texts(TEXTS)).min() >= least
    assert not np.array_equal(texts, reference.encode_texts(TEXTS))  # ONNX Runtime answered
    assert least <= served.runtime_agreement <= 1.0


def test_heatmaps_stay_on_pytorch(micro_model_dir, tmp_path):
    """Gradients exist only in PyTorch: an int8-served backbone explains exactly as PyTorch does."""
    int8 = load_backbone(
        str(micro_model_dir), device="cpu", runtime="onnx-int8", cache_dir=tmp_path
    )
    image = draw_scene("red", "circle")
    served, reference = (
        explain(int8, image, "a red circle"),
        explain(int8.on_torch(), image, "a red circle"),
    )
    assert served.score == reference.score and np.array_equal(served.raw, reference.raw)


def export_folders(cache: Path) -> list[Path]:
    return sorted(path for path in (cache / "onnx").iterdir() if not path.name.startswith("."))


def test_towers_export_once_and_again_when_the_weights_change(tmp_path):
    model_dir, cache = tmp_path / "model", tmp_path / "cache"
    torch.manual_seed(0)
    model, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
    save_backbone(model, "ShapesCLIP-Micro", model_dir)
    first = load_backbone(str(model_dir), device="cpu", runtime="onnx", cache_dir=cache)
    [folder] = export_folders(cache)
    written = (folder / "export.json").stat().st_mtime_ns
    load_backbone(str(model_dir), device="cpu", runtime="onnx-int8", cache_dir=cache)
    assert export_folders(cache) == [folder]  # both runtimes come from the one export
    assert (folder / "export.json").stat().st_mtime_ns == written

    with torch.no_grad():  # fine-tuned in place: same architecture, same path, other weights
        model.text_projection.mul_(-1.0)
    save_backbone(model, "ShapesCLIP-Micro", model_dir)
    changed = load_backbone(str(model_dir), device="cpu", runtime="onnx", cache_dir=cache)
    assert len(export_folders(cache)) == 2
    truth = changed.on_torch().encode_texts(TEXTS)
    assert cosines(changed.encode_texts(TEXTS), truth).min() > 0.999
    assert cosines(first.encode_texts(TEXTS), truth).max() < 0  # the old export answered -truth


def test_an_unknown_runtime_is_named(micro_model_dir):
    with pytest.raises(BadInput, match="onnx8.*torch, onnx, onnx-int8"):
        load_backbone(str(micro_model_dir), device="cpu", runtime="onnx8")
    with pytest.raises(BadInput, match="runs on the CPU"):
        load_backbone(str(micro_model_dir), device="cuda", runtime="onnx-int8")


def test_combined_agreement_bounds_the_cosine_between_two_runtimes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        truth = rng.normal(size=16)
        first, second = (truth + rng.normal(scale=0.2, size=16) for _ in range(2))
        unit = [v / np.linalg.norm(v) for v in (truth, first, second)]
        bound = combined_agreement(float(unit[0] @ unit[1]), float(unit[0] @ unit[2]))
        assert float(unit[1] @ unit[2]) >= bound - 1e-9
    assert combined_agreement(1.0, 0.9997) == pytest.approx(0.9997)
    assert combined_agreement(0.995, 0.995) < MIN_AGREEMENT < combined_agreement(0.999, 0.999)
    assert combined_agreement(-1.0, -1.0) == pytest.approx(math.cos(math.pi))


@pytest.fixture
def torch_index(micro_backbone, tmp_path) -> Path:
    folder = make_collection(tmp_path / "images")
    build_index(folder, tmp_path / "index", micro_backbone, progress=False)
    return tmp_path / "index"


def test_an_index_from_one_runtime_serves_queries_from_another(
    torch_index, micro_model_dir, tmp_path
):
    int8 = load_backbone(
        str(micro_model_dir), device="cpu", runtime="onnx-int8", cache_dir=tmp_path
    )
    index = Index.load(torch_index, int8)
    assert index.runtimes() == {"torch": 1.0}
    torch_hits = Searcher(index, int8.on_torch()).image(Path(index.image_path("red-circle")), k=3)
    int8_hits = Searcher(index, int8).image(Path(index.image_path("red-circle")), k=3)
    assert [h.id for h in int8_hits.hits][0] == [h.id for h in torch_hits.hits][0] == "red-circle"


def test_an_index_from_a_runtime_that_agrees_poorly_is_refused(torch_index, micro_backbone):
    """An index built elsewhere with a model whose int8 export drifted (cosine 0.95 to PyTorch)."""
    versions = torch_index / "versions" / (torch_index / "CURRENT").read_text()
    manifest = json.loads((versions / "manifest.json").read_text())
    manifest["runtimes"] = {"onnx-int8": 0.95}
    (versions / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        IndexMismatch, match=r"holds onnx-int8 embeddings.*queries run on torch.*0\.95"
    ):
        Index.load(torch_index, micro_backbone)


def test_an_update_records_the_runtime_of_its_new_vectors(torch_index, micro_model_dir, tmp_path):
    int8 = load_backbone(
        str(micro_model_dir), device="cpu", runtime="onnx-int8", cache_dir=tmp_path / "cache"
    )
    update_index(torch_index, int8, progress=False)  # nothing changed: nothing embedded
    assert Index.load(torch_index).runtimes() == {"torch": 1.0}
    draw_scene("blue", "circle", jitter=2).save(tmp_path / "images" / "round" / "new.png")
    update_index(torch_index, int8, progress=False)
    runtimes = Index.load(torch_index).runtimes()
    assert runtimes == {"torch": 1.0, "onnx-int8": int8.runtime_agreement}


def test_a_damaged_export_is_exported_again(micro_model_dir, tmp_path):
    """A truncated file in the cache (a full disk, a killed copy) costs one export, not an error."""
    load_backbone(str(micro_model_dir), device="cpu", runtime="onnx", cache_dir=tmp_path)
    [folder] = export_folders(tmp_path)
    damaged = folder / "text.int8.onnx"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    backbone_module._towers.cache_clear()  # as in a fresh process: no sessions loaded yet
    int8 = load_backbone(
        str(micro_model_dir), device="cpu", runtime="onnx-int8", cache_dir=tmp_path
    )
    reference = int8.on_torch().encode_texts(TEXTS)
    assert cosines(int8.encode_texts(TEXTS), reference).min() > 0.98
    assert export_folders(tmp_path) == [folder] and damaged.stat().st_size > 1000
