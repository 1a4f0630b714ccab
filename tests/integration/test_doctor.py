"""`doctor`: the shipped deployment passes (what CI checks), and a broken one has each of its
faults named, with what to do, and a non-zero exit."""

from __future__ import annotations

import json
import shutil

import huggingface_hub.constants
import pytest
import torch

from retrieval.backbone import model_fingerprint, new_model, save_backbone
from retrieval.cli.main import main
from retrieval.composed.combiner import new_combiner, save_combiner
from retrieval.config import Settings
from retrieval.doctor import FAULT, WARNING, diagnose
from retrieval.index import build_index
from tests.helpers import make_collection


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """Nothing downloaded from the Hub, whatever this machine's own cache holds."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_the_shipped_configuration_passes(tmp_path, empty_hub_cache, monkeypatch, capsys):
    report = diagnose(Settings(cache_dir=str(tmp_path / "cache")))
    assert not report.faults, report.text()
    assert "shapes" in report.healthy and "the Combiner fits" in report.healthy["shapes"]
    hosted = {finding.collection: finding for finding in report.findings}
    assert set(hosted) == {"noisyart", "cirr", "fashioniq"}  # published later: not cached here
    assert all(finding.level == WARNING for finding in hosted.values())
    assert hosted["cirr"].problem.startswith("not cached")
    assert "python -m retrieval pull smart-retrieval/cirr-rn50x4-index" in hosted["cirr"].fix
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["doctor"]) == 0
    assert "ok       shapes" in capsys.readouterr().out


@pytest.fixture(scope="module")
def broken_deployment(tmp_path_factory, micro_backbone):
    """One index built with the micro model, and entries each broken in one way."""
    root = tmp_path_factory.mktemp("deployment")
    make_collection(root / "images")
    build_index(root / "images", root / "index", micro_backbone, progress=False)
    torch.manual_seed(1)
    other, _, _ = new_model("ShapesCLIP-Micro", device="cpu")  # same sizes, other weights
    save_backbone(other, "ShapesCLIP-Micro", root / "other-model")
    wide = new_combiner(
        micro_backbone.dim + 16,
        model_spec="a wider model",
        model_fingerprint=model_fingerprint(micro_backbone),
    )
    save_combiner(wide, root / "wide-combiner")
    for broken, remove in (("no-thumb", "thumbs/*"), ("no-vectors", "versions/*/vectors.npy")):
        shutil.copytree(root / "index", root / broken)
        next((root / broken).glob(remove)).unlink()
    entries = [
        {"name": "good", "title": "fine", "index": "index"},
        {"name": "mismatch", "title": "t", "index": "index", "model": "other-model"},
        {"name": "no-thumb", "title": "t", "index": "no-thumb"},
        {"name": "no-vectors", "title": "t", "index": "no-vectors"},
        {"name": "wrong-combiner", "title": "t", "index": "index", "combiner": "wide-combiner"},
        {"name": "nowhere", "title": "t", "index": "does/not/exist"},
        {"name": "bad-hub", "title": "t", "index": "hf-hub:no-organisation"},
        {"name": "uncached", "title": "t", "index": "hf-hub:museum/never-downloaded"},
        {"name": "untitled", "index": "index"},
        {"name": "twice", "title": "t", "index": "index"},
        {"name": "twice", "title": "t", "index": "index"},
    ]
    (root / "collections.json").write_text(json.dumps({"collections": entries}))
    return root / "collections.json"


def test_a_broken_deployment_names_each_fault_and_what_to_do(
    broken_deployment, tmp_path, empty_hub_cache, capsys
):
    report = diagnose(Settings(cache_dir=str(tmp_path)), broken_deployment)
    faults = {finding.collection: finding for finding in report.faults}
    expected = {
        "mismatch": ("different weights", 'set "model"'),
        "no-thumb": ("1 files of the index are missing: thumbs/", "rebuild"),
        "no-vectors": ("vectors.npy", "rebuild"),
        "wrong-combiner": (f"features {16 + 64}", "train-combiner"),
        "nowhere": ("does not exist", 'correct "index"'),
        "bad-hub": ("hf-hub:org/repo", "check the repo name"),
        "untitled": ("it needs name, title and index", "correct collections.json"),
        "twice": ("2 collections are named 'twice'", "correct collections.json"),
    }
    assert set(faults) == set(expected), report.text()
    for name, (problem, fix) in expected.items():
        assert problem in faults[name].problem and fix in faults[name].fix, faults[name]
    assert list(report.healthy) == ["good"]
    uncached = next(f for f in report.findings if f.collection == "uncached")
    assert uncached.level == WARNING and "pull museum/never-downloaded" in uncached.fix
    assert main(["doctor", "--collections", str(broken_deployment)]) == 1
    out, err = capsys.readouterr()
    assert f"{FAULT:<8} wrong-combiner: the Combiner does not fit the model" in out
    assert f"{len(expected) + 1} faults" in err  # "twice" counts once per entry


def test_an_unreadable_collections_file_is_a_fault(tmp_path):
    (tmp_path / "collections.json").write_text("{not json")
    report = diagnose(Settings(cache_dir=str(tmp_path)), tmp_path / "collections.json")
    assert [f.collection for f in report.faults] == ["collections.json"]
