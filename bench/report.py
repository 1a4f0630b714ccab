"""Write one benchmark's section of BENCHMARKS.md, leaving the other sections as they are."""

from __future__ import annotations

import platform
import re
import sys
import time
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every section is written by a script under `bench/`; the command that produced it is given.\n"
    "Timings are noisy on shared machines: compare the ratios measured within one run.\n"
)


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )


def command_line() -> str:
    """How the running benchmark was started, relative to the repository root (as `python -m`)."""
    script = Path(sys.argv[0]).resolve()
    root = BENCHMARKS.parent
    name = (
        "-m " + ".".join(script.relative_to(root).with_suffix("").parts)
        if script.is_relative_to(root)
        else sys.argv[0]
    )
    return " ".join(["python", name, *sys.argv[1:]])


def write_section(key: str, title: str, body: str) -> None:
    """Replace (or append) the section marked `key`, stamped with the command and machine."""
    command = command_line()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = (
        f"<!-- bench:{key} -->\n## {title}\n\n"
        f"Command: `{command}`  \nRun: {stamp} on {machine()}\n\n{body.strip()}\n"
        f"<!-- /bench:{key} -->\n"
    )
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    pattern = re.compile(
        rf"<!-- bench:{re.escape(key)} -->.*?<!-- /bench:{re.escape(key)} -->\n", re.S
    )
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text + "\n" + section
    BENCHMARKS.write_text(text)
