"""Options several commands share, declared once."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from retrieval.backbone import PREPROCESSING
from retrieval.errors import BadInput
from retrieval.runtime import RUNTIMES, check_runtime


def add_preprocessing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preprocessing",
        default="standard",
        choices=list(PREPROCESSING),
        help="image preprocessing: the backbone's own, or pad elongated images to ratio 1.25 "
        "(targetpad, used by CLIP4Cir) or to a square (squarepad) first",
    )


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when present)")


def add_runtime(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        help="where the model runs on a CPU: torch (default), onnx or onnx-int8 (ONNX Runtime, "
        "exported once per model under SR_CACHE_DIR; default: SR_RUNTIME)",
    )


def runtime_of(args) -> str:
    """--runtime, else SR_RUNTIME, else torch."""
    runtime = getattr(args, "runtime", None) or args.settings.runtime or "torch"
    return check_runtime(runtime, "SR_RUNTIME")


def device_of(args) -> str:
    """--device, else SR_DEVICE, else "" (CUDA when present)."""
    return getattr(args, "device", None) or args.settings.device


def add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_recipe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe",
        help="TOML file of this command's option values (see recipes/); options given on the "
        "command line win over the recipe",
    )


def recipe_values(argv: list[str]) -> tuple[str, dict] | None:
    """(path, values) of the `--recipe FILE` in argv, or None."""
    for position, token in enumerate(argv):
        if token == "--recipe" and position + 1 < len(argv):
            path = argv[position + 1]
        elif token.startswith("--recipe="):
            path = token.partition("=")[2]
        else:
            continue
        try:
            return path, tomllib.loads(Path(path).read_text())
        except FileNotFoundError as error:
            raise BadInput(f"recipe {path} not found") from error
        except tomllib.TOMLDecodeError as error:
            raise BadInput(f"recipe {path} is not valid TOML ({error})") from error
    return None


def apply_recipe(command: argparse.ArgumentParser, path: str, values: dict) -> None:
    """Make a recipe's values the command's defaults; an unknown key is an error that names it."""
    actions = {action.dest: action for action in command._actions}
    given = {key.replace("-", "_"): value for key, value in values.items()}
    for key, value in given.items():
        action = actions.get(key)
        if action is None or key == "recipe":
            known = ", ".join(sorted(a for a in actions if a not in ("help", "recipe", "func")))
            raise BadInput(f"recipe {path}: unknown option {key!r}; this command takes {known}")
        action.default, action.required = value, False
    for group in command._mutually_exclusive_groups:  # e.g. --images or --index: the recipe chose
        if any(action.dest in given for action in group._group_actions):
            group.required = False
