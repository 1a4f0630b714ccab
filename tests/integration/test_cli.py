import argparse
import json
import subprocess
import sys
from pathlib import Path

from retrieval.cli.main import build_parser, main
from retrieval.cli.options import apply_recipe, recipe_values
from tests.helpers import make_collection

ROOT = Path(__file__).resolve().parents[2]


def _walk(parser, path):
    """Every (command path, parser) pair, sub-commands included (eval cirr, shapes generate, ...)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}".strip())


def test_every_command_has_help():
    parsers = dict(_walk(build_parser(), ""))
    assert {"index", "update", "search", "info", "push", "pull", "eval cirr", "tag"} <= set(parsers)
    for name, parser in parsers.items():
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{name} {action.dest} has no help"


def test_index_then_search_end_to_end(tmp_path, micro_model_dir, capsys):
    make_collection(tmp_path / "images")
    assert (
        main(
            [
                "index",
                str(tmp_path / "images"),
                "--out",
                str(tmp_path / "index"),
                "--model",
                str(micro_model_dir),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "8 items" in capsys.readouterr().out
    assert (
        main(["search", "a red circle", "--index", str(tmp_path / "index"), "-k", "3", "--json"])
        == 0
    )
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]
    assert (
        main(
            [
                "search",
                "--similar",
                "red-circle",
                "--index",
                str(tmp_path / "index"),
                "--artist",
                "Anna",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and "red-circle" not in "".join(lines)
    assert main(["search", "   ", "--index", str(tmp_path / "index")]) == 1
    assert "empty" in capsys.readouterr().err
    index = str(tmp_path / "index")
    with_model = ["search", "a red circle", "--index", index, "--model", str(micro_model_dir)]
    assert main([*with_model, "-k", "3", "--json"]) == 0  # the same model, named explicitly
    assert json.loads(capsys.readouterr().out)["hits"] == hits
    assert main(["update", index, "--model", str(micro_model_dir)]) == 0
    assert "8 unchanged" in capsys.readouterr().out
    assert main(["search", "x", "--index", index, "--date-from", "1900", "--date-to", "1800"]) == 1
    assert "the date range is empty" in capsys.readouterr().err  # as the API says (400)
    bad_params = ["index", str(tmp_path / "images"), "--out", index, "--index-params", "{bad"]
    assert main([*bad_params, "--model", str(micro_model_dir)]) == 1
    assert "--index-params is not JSON" in capsys.readouterr().err
    report = tmp_path / "report.json"
    assert main(["update", index, "--report", str(report)]) == 0
    assert json.loads(report.read_text())["unchanged"] == 8


def test_module_entry_point_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "retrieval", "info", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "not an index" in done.stderr


def test_a_recipe_sets_the_options_and_the_command_line_wins(tmp_path, capsys):
    recipe = tmp_path / "micro.toml"
    recipe.write_text(
        'data = "shapes"\narch = "ShapesCLIP-Micro"\nsteps = 1000\nbatch_size = 8\nlr = 0.002\n'
        f'val_sets = 0\nepoch_size = 16\nthreads = 1\nout = "{tmp_path / "from-recipe"}"\n'
    )
    out = tmp_path / "from-command-line"
    assert main(["train-clip", "--recipe", str(recipe), "--steps", "2", "--out", str(out)]) == 0
    report = json.loads((out / "training.json").read_text())
    assert report["config"]["steps"] == 2 and report["config"]["lr"] == 0.002
    assert report["config"]["batch_size"] == 8 and not (tmp_path / "from-recipe").exists()


def test_a_recipe_with_an_unknown_option_is_refused_by_name(tmp_path, capsys):
    recipe = tmp_path / "typo.toml"
    recipe.write_text("stepz = 3\n")
    assert main(["train-clip", "--recipe", str(recipe), "--out", str(tmp_path / "x")]) == 2
    assert "unknown option 'stepz'" in capsys.readouterr().err
    assert main(["train-clip", "--recipe", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml not found" in capsys.readouterr().err


def test_the_shipped_recipes_name_only_real_options():
    for path in sorted((ROOT / "recipes").glob("*.toml")):
        command = {"combiner": "train-combiner", "stage1": "train-stage1", "phi": "train-phi"}.get(
            path.stem.split("-")[-1], "train-clip"
        )
        parser = build_parser()
        apply_recipe(parser.commands[command], *recipe_values(["--recipe", str(path)]))
        assert parser.parse_args([command]).out, path


def test_index_and_search_on_onnx_runtime(tmp_path, capsys, monkeypatch):
    """The shipped model indexed and queried on ONNX Runtime int8: the manifest says so, a
    PyTorch query on that index still finds the same item, and a bad SR_RUNTIME is named."""
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    make_collection(tmp_path / "images")
    index = str(tmp_path / "index")
    model = str(ROOT / "precomputed" / "shapes-clip-small")
    assert (
        main(
            [
                "index",
                str(tmp_path / "images"),
                "--out",
                index,
                "--model",
                model,
                "--runtime",
                "onnx-int8",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["info", index]) == 0
    runtimes = json.loads(capsys.readouterr().out)["runtimes"]
    assert list(runtimes) == ["onnx-int8"] and runtimes["onnx-int8"] > 0.999
    assert any((tmp_path / "cache" / "onnx").glob("*/text.int8.onnx"))
    tops = []
    for runtime in ("onnx-int8", "torch"):
        query = [
            "search",
            "a red circle",
            "--index",
            index,
            "-k",
            "3",
            "--json",
            "--runtime",
            runtime,
        ]
        assert main(query) == 0
        tops.append(json.loads(capsys.readouterr().out)["hits"][0]["id"])
    # the same item under both runtimes, and a red one: these 48 px shapes fill the image, far
    # larger than any Shapes-world object, and the shipped model tells their colour, not their shape
    assert tops[0] == tops[1] and tops[0].startswith("red-"), tops
    monkeypatch.setenv("SR_RUNTIME", "int8")
    assert main(["search", "a red circle", "--index", index]) != 0
    assert "SR_RUNTIME" in capsys.readouterr().err
