import argparse
import json
import subprocess
import sys
from pathlib import Path

from retrieval.cli.main import build_parser, main
from tests.helpers import make_collection

ROOT = Path(__file__).resolve().parent.parent


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


def test_module_entry_point_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "retrieval", "info", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "not an index" in done.stderr
