"""The Ray engine (issue #17) on a local one-node Ray: the in-process pipeline's vectors, thumbnails
and failure reports, through the same index writers, and the CLI's `--engine ray`."""

from __future__ import annotations

import ast
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval import ray_engine
from retrieval.cli.main import main
from retrieval.config import DEFAULTS, Settings
from retrieval.embed import embed_files
from retrieval.errors import BadInput
from retrieval.index import Index, build_index
from retrieval.ray_engine import ActorPlan, EngineUnavailable, gather, plan_actors, ray_session
from retrieval.shapes.world import random_scene, render
from retrieval.stores import open_index
from tests.helpers import make_collection

ROOT = Path(__file__).resolve().parents[2]
TWO_ACTORS = ActorPlan(actors=2, num_cpus=1, num_gpus=0.0)


@pytest.fixture(scope="module")
def local_ray():
    """One local one-node Ray for the whole module: 2 CPUs, no dashboard, on loopback only."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read by ray: bind 127.0.0.1
        patch.setenv("PYTHONPATH", str(ROOT))  # the actors import `retrieval` from this checkout
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def backbone(micro_backbone):
    """A tiny random open_clip model (tests/conftest.py): the engine is model-agnostic."""
    return micro_backbone


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """Drawn scenes (PNG), a large JPEG (decoded at reduced scale), a corrupt and a missing file."""
    root = make_collection(tmp_path_factory.mktemp("ray-files"))
    paths = sorted(root.rglob("*.png"))
    rng = np.random.default_rng(0)
    for number in range(3):
        picture, _ = render(random_scene(rng), seed=number)
        picture.save(root / f"scene{number}.png")
        paths.append(root / f"scene{number}.png")
    picture.resize((640, 480)).save(root / "large.jpg", quality=90)
    (root / "corrupt.png").write_bytes(b"\x89PNG not really")
    return [*paths[:4], root / "corrupt.png", *paths[4:], root / "large.jpg", root / "gone.png"]


@pytest.fixture(scope="module")
def both(local_ray, backbone, files):
    """The same files embedded in process and by two Ray actors (batches of 3: several blocks)."""
    settings = replace(DEFAULTS, batch_size=3)
    inprocess = embed_files(backbone, files, settings, num_workers=0, progress=False)
    on_ray = ray_engine.embed_with_actors(local_ray, backbone, files, TWO_ACTORS, settings, False)
    return inprocess, on_ray


def test_local_ray_listens_on_loopback_only(local_ray):
    assert all(node["NodeManagerAddress"].startswith("127.") for node in local_ray.nodes())


def test_ray_vectors_are_the_in_process_vectors(both):
    inprocess, on_ray = both
    assert on_ray.ok == inprocess.ok and len(on_ray.ok) == 12
    np.testing.assert_allclose(on_ray.vectors, inprocess.vectors, atol=1e-5, rtol=0)
    np.testing.assert_allclose(on_ray.norms, inprocess.norms, atol=1e-5, rtol=1e-6)
    assert on_ray.thumbs == inprocess.thumbs  # same decode, same JPEG bytes


def test_unreadable_files_are_reported_not_dropped(both, files):
    inprocess, on_ray = both
    assert on_ray.failed == inprocess.failed
    assert [files[position].name for position, _ in on_ray.failed] == ["corrupt.png", "gone.png"]
    reasons = dict(on_ray.failed)
    assert "not an image file" in reasons[4] and "file not found" in reasons[len(files) - 1]
    assert sorted(on_ray.ok + list(reasons)) == list(range(len(files)))


def test_cli_engine_ray_builds_an_index_that_searches_the_same(
    local_ray, micro_model_dir, tmp_path, capsys
):
    """`index --engine ray` (on the module's Ray) against the default engine, same folder."""
    images = make_collection(tmp_path / "images")
    (images / "round" / "broken.png").write_bytes(b"broken")
    common = ["--model", str(micro_model_dir), "--device", "cpu", "--runtime", "torch"]
    for engine in ("inprocess", "ray"):
        out, report = tmp_path / engine, tmp_path / f"{engine}.json"
        argv = ["index", str(images), "--out", str(out), "--report", str(report), *common]
        assert main([*argv, "--engine", engine]) == 0
    assert "8 items" in capsys.readouterr().out
    assert json.loads((tmp_path / "ray.json").read_text())["skipped"] == [
        {"file": "round/broken.png", "reason": "broken.png: not an image file PIL can read"}
    ]
    reference, built = Index.load(tmp_path / "inprocess"), Index.load(tmp_path / "ray")
    assert [item["id"] for item in built.items] == [item["id"] for item in reference.items]
    np.testing.assert_allclose(built.vectors, reference.vectors, atol=1e-5, rtol=0)
    hits = {}
    for engine in ("inprocess", "ray"):
        query = ["search", "a red circle", "--index", str(tmp_path / engine), "-k", "5", "--json"]
        assert main(query) == 0
        hits[engine] = json.loads(capsys.readouterr().out)["hits"]
    assert [hit["id"] for hit in hits["ray"]] == [hit["id"] for hit in hits["inprocess"]]
    scores = [[hit["score"] for hit in hits[engine]] for engine in ("inprocess", "ray")]
    np.testing.assert_allclose(*scores, atol=1e-5)


@pytest.fixture
def engine_calls(monkeypatch):
    """`--engine ray` wiring without starting actors: the engine's entry point records its call
    and embeds in process (the Ray path itself is covered above)."""
    calls = []

    def spy(backbone, paths, settings, progress=True):
        calls.append(([Path(path).name for path in paths], settings))
        return embed_files(backbone, paths, settings, num_workers=0, progress=progress)

    monkeypatch.setattr(ray_engine, "embed_files_ray", spy)
    return calls


def test_cli_update_embeds_only_the_new_files_with_the_engine(
    micro_model_dir, tmp_path, engine_calls, capsys
):
    images = make_collection(tmp_path / "images")
    common = ["--device", "cpu", "--runtime", "torch", "--engine", "ray"]
    argv = [
        "index",
        str(images),
        "--out",
        str(tmp_path / "index"),
        "--model",
        str(micro_model_dir),
    ]
    assert main([*argv, *common, "--ray-address", "ray://head:10001"]) == 0
    Image.new("RGB", (64, 64), (200, 30, 30)).save(images / "new.png")
    assert main(["update", str(tmp_path / "index"), *common]) == 0
    assert "1 added" in capsys.readouterr().out
    assert [names for names, _ in engine_calls][1] == ["new.png"]
    assert engine_calls[0][1].ray_address == "ray://head:10001"
    assert engine_calls[1][1].engine == "ray" and engine_calls[1][1].ray_address == ""


def test_the_milvus_backend_receives_the_engine_vectors(
    micro_model_dir, tmp_path, engine_calls, monkeypatch
):
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SR_MILVUS_URI", str(tmp_path / "milvus.db"))
    images = make_collection(tmp_path / "images")
    argv = [
        "index",
        str(images),
        "--out",
        str(tmp_path / "index"),
        "--model",
        str(micro_model_dir),
    ]
    argv += ["--backend", "milvus", "--engine", "ray", "--device", "cpu", "--runtime", "torch"]
    assert main(argv) == 0
    assert len(engine_calls) == 1 and len(engine_calls[0][0]) == 8
    collection = open_index(tmp_path / "index", milvus_uri=str(tmp_path / "milvus.db"))
    assert len(collection) == 8


def test_ray_address_needs_the_ray_engine(tmp_path, capsys):
    argv = ["index", str(tmp_path), "--out", str(tmp_path / "i"), "--model", "m"]
    assert main([*argv, "--ray-address", "auto"]) == 1
    assert "--ray-address needs --engine ray" in capsys.readouterr().err


def test_an_unknown_engine_is_refused_before_embedding(tmp_path, backbone):
    images = make_collection(tmp_path / "images")
    with pytest.raises(BadInput, match="unknown engine 'spark'"):
        build_index(images, tmp_path / "index", backbone, settings=Settings(engine="spark"))
    assert not (tmp_path / "index" / "CURRENT").exists()


def test_without_ray_the_error_names_the_requirements_file(tmp_path, backbone, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    images = make_collection(tmp_path / "images")
    with pytest.raises(EngineUnavailable, match=r"pip install -r requirements-scale\.txt"):
        build_index(images, tmp_path / "index", backbone, settings=Settings(engine="ray"))


def test_ray_is_imported_only_inside_the_engine_functions():
    """`import retrieval...` must work without ray: no module-level `import ray` anywhere."""
    for path in (ROOT / "retrieval").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [alias.name for alias in getattr(node, "names", [])]
            module = getattr(node, "module", None) or ""
            imported = [module] if isinstance(node, ast.ImportFrom) else names
            assert not [n for n in imported if n == "ray" or n.startswith("ray.")], path


def test_a_file_ray_loses_is_an_error_not_a_gap():
    row = {
        "position": np.array([0]),
        "ok": np.array([True]),
        "vector": np.ones((1, 2), np.float32),
        "norm": np.ones(1, np.float32),
        "thumb": np.array([b"jpeg"], dtype=object),
        "error": np.array([""], dtype=object),
    }
    assert gather(iter([row]), 1, 2, progress=False).ok == [0]
    with pytest.raises(RuntimeError, match="Ray returned 1 of 2 files"):
        gather(iter([row]), 2, 2, progress=False)


def test_actor_layout_follows_the_cluster():
    cpus_only, with_gpus = {"CPU": 16.0}, {"CPU": 32.0, "GPU": 4.0}
    assert plan_actors(cpus_only) == ActorPlan(16, 1, 0.0)
    assert plan_actors(cpus_only, Settings(ray_actor_cpus=4)) == ActorPlan(4, 4, 0.0)
    assert plan_actors(with_gpus, Settings(ray_actor_cpus=6)) == ActorPlan(4, 6, 1.0)
    assert plan_actors(with_gpus, Settings(ray_actors=8)) == ActorPlan(8, 1, 0.5)
    assert plan_actors(with_gpus, Settings(device="cpu")) == ActorPlan(32, 1, 0.0)


class _FakeRay:
    def __init__(self, initialized: bool):
        self.initialized, self.calls = initialized, []

    def is_initialized(self):
        return self.initialized

    def init(self, **options):
        self.calls.append(("init", options))

    def shutdown(self):
        self.calls.append(("shutdown", {}))


def test_without_an_address_the_command_starts_and_stops_a_local_ray(monkeypatch):
    fake = _FakeRay(initialized=False)
    monkeypatch.setattr(ray_engine, "_ray", lambda: fake)
    with ray_session(""):
        assert [call for call, _ in fake.calls] == ["init"]
    assert fake.calls[0][1]["address"] == "local" and not fake.calls[0][1]["include_dashboard"]
    assert fake.calls[-1][0] == "shutdown"
    cluster = _FakeRay(initialized=False)
    monkeypatch.setattr(ray_engine, "_ray", lambda: cluster)
    with ray_session("ray://head:10001"):
        pass
    options = cluster.calls[0][1]
    assert options["address"] == "ray://head:10001"
    assert options["runtime_env"]["py_modules"] == [str(ROOT / "retrieval")]
    connected = _FakeRay(initialized=True)  # a caller's own Ray is used and left running
    monkeypatch.setattr(ray_engine, "_ray", lambda: connected)
    with ray_session("auto"):
        pass
    assert connected.calls == []


def test_the_engine_returns_what_embed_files_returns_for_no_files(backbone):
    result = ray_engine.embed_files_ray(backbone, [], DEFAULTS, progress=False)
    assert result.vectors.shape == (0, backbone.dim) and result.ok == [] and result.failed == []
