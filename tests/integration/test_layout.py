"""The shape of the code: serving loads no research code, no import cycles, one model-config lookup."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest

from retrieval.backbone import CONFIG_FILE, model_config
from retrieval.errors import BadInput, RetrievalError
from retrieval.train.clip import model_to_train

ROOT = Path(__file__).resolve().parents[2]
RESEARCH = (
    "retrieval.train",
    "retrieval.eval",
    "retrieval.data",
    "retrieval.cli",
    "retrieval.shapes",
    "retrieval.publish",
)

SERVE_AND_LIST_MODULES = """
import sys
from retrieval.catalog import Catalog
from retrieval.config import Settings
catalog = Catalog.from_file("collections.json", Settings())
shapes = catalog.get("shapes")
hits = shapes.searcher.text("a red circle", k=3).hits
for method in ("sum", "combiner", "zero-shot"):
    shapes.searcher.composed(hits[0].id, "make it blue", method, k=3)
import app
print(" ".join(sorted(sys.modules)))
"""


def test_serving_the_shapes_collection_loads_no_research_code():
    """A fresh interpreter opens the shipped collection, searches with every composed method and
    imports the app: nothing under train/eval/data/cli/shapes may be loaded on that path."""
    result = subprocess.run(
        [sys.executable, "-c", SERVE_AND_LIST_MODULES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = result.stdout.split()
    assert "retrieval.composed.combiner" in loaded and "app" in loaded  # the path really ran
    leaked = [name for name in loaded if name.startswith(RESEARCH)]
    assert not leaked, leaked


def _module_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from pkg import sub` counts as pkg.sub)."""
    paths = [*(ROOT / "retrieval").rglob("*.py"), *(ROOT / "webapp").rglob("*.py")]
    names = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in paths
    }
    graph = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in names else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {d for d in found if d in names and d != name}
    return graph


def test_no_import_cycles_and_the_library_never_imports_upwards():
    graph = _module_graph()
    serving = [m for m in graph if m.startswith("retrieval") and not m.startswith(RESEARCH)]
    serving = [m for m in serving if m != "retrieval.__main__"]
    for module in serving:
        upward = [d for d in graph[module] if d.startswith((*RESEARCH, "webapp"))]
        assert not upward, (module, upward)
    for module in (m for m in graph if m.startswith("retrieval.shapes")):
        assert not [d for d in graph[module] if d.startswith(("retrieval.train", "retrieval.eval"))]

    def visit(module, path):
        assert module not in path, " -> ".join([*path, module])
        for dependency in graph.get(module, ()):
            visit(dependency, [*path, module])

    for module in graph:
        visit(module, [])


def test_argument_parsing_lives_only_in_the_cli():
    for path in [*(ROOT / "retrieval").rglob("*.py"), *(ROOT / "webapp").rglob("*.py")]:
        if (
            "cli"
            in path.relative_to(ROOT / "retrieval" if "retrieval" in path.parts else ROOT).parts
        ):
            continue
        assert "add_argument(" not in path.read_text(), path


def test_model_config_of_every_kind_of_spec(tmp_path, monkeypatch, micro_backbone):
    assert (
        model_config("ShapesCLIP-Tiny")["embed_dim"]
        == model_config(str(ROOT / "precomputed" / "shapes-clip-small"))["embed_dim"]
    )
    with pytest.raises(BadInput, match="no-such-arch"):
        model_config("no-such-arch/weights")
    snapshot = tmp_path / "models--museum--clip" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    config = {"model_cfg": {"embed_dim": 7}, "preprocess_cfg": {}}
    (snapshot / CONFIG_FILE).write_text(json.dumps(config))
    (tmp_path / "models--museum--clip" / "refs").mkdir()
    (tmp_path / "models--museum--clip" / "refs" / "main").write_text("b" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_config("hf-hub:museum/clip") == {"embed_dim": 7}


def test_fine_tuning_an_unreachable_hub_model_fails_before_training(tmp_path, monkeypatch):
    """It used to return no config and fail only when saving, after the whole run."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RetrievalError, match="hf-hub:museum/never-downloaded"):
        model_to_train("ShapesCLIP-Tiny", init="hf-hub:museum/never-downloaded")


def test_only_the_settings_read_the_environment():
    """The library takes a Settings object; `Settings.from_env()` is the one reader of SR_*."""
    readers = [
        path.relative_to(ROOT)
        for path in (ROOT / "retrieval").rglob("*.py")
        if path.name != "config.py"
        and ("os.environ" in path.read_text() or "getenv(" in path.read_text())
    ]
    assert not readers, readers
    library = [
        p
        for p in (ROOT / "retrieval").rglob("*.py")
        if "cli" not in p.parts and p.name != "config.py"
    ]
    assert not [p for p in library if "Settings.from_env(" in p.read_text()]
