"""Mutation testing of the serving core with mutmut: how many one-line breakages the tests catch.

Each module is mutated in its own copy of the repository (runs/mutation/<module>/, kept so that
`mutmut browse` or `mutmut show NAME` can be run there), against the tests written for it: a
mutant counts as killed only if those tests fail, not if some distant test happens to trip.
Slow (tens of minutes on two cores), so it is not part of CI.

    python -m bench.mutation_test                      # every module, section "mutation"
    python -m bench.mutation_test --modules images     # one module, for a quick look
    python -m bench.mutation_test --save-before bench/mutation_before.json
    python -m bench.mutation_test --survivors-only     # after adding tests: re-test survivors
    python -m bench.mutation_test --report-only        # the section, from the runs already made

Surviving mutants judged equivalent or harmless are listed with a reason in
bench/mutation_survivors.toml; the report shows every survivor and its reason, or "unexplained".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

from bench.report import write_section

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "mutation"
SURVIVORS = Path(__file__).with_name("mutation_survivors.toml")
GOAL = 0.85

# module key -> (files mutated, the tests written for them)
TARGETS = {
    "index": (["retrieval/index.py"], ["tests/unit/test_index.py", "tests/unit/test_index_rules.py", "tests/unit/test_exact_search.py", "tests/unit/test_mutation_gaps_index.py", "tests/integration/test_atomic_writes.py", "tests/integration/test_fault_injection.py"]),
    "search": (["retrieval/search.py"], ["tests/unit/test_search.py", "tests/unit/test_search_rules.py"]),
    "images": (["retrieval/images.py"], ["tests/unit/test_images.py", "tests/unit/test_image_rules.py"]),
    "uploads": (["retrieval/uploads.py"], ["tests/integration/test_uploads.py", "tests/integration/test_upload_rules.py", "tests/integration/test_upload_faults.py", "tests/integration/test_mutation_gaps_uploads.py"]),
    "catalog": (["retrieval/catalog.py"], ["tests/integration/test_catalog.py", "tests/integration/test_catalog_rules.py"]),
    "api-validation": (
        ["webapp/api/deps.py", "webapp/api/limits.py", "webapp/api/errors.py"],
        ["tests/integration/test_api.py", "tests/integration/test_api_rules.py", "tests/integration/test_cors.py", "tests/integration/test_error_logging.py", "tests/integration/test_mutation_gaps_api.py"],
    ),
}  # fmt: skip
CAUGHT = ("killed", "timeout")
RESULTS = "results.json"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
RESULT_LINE = re.compile(r"^\s*([\w.]+__mutmut_\d+): (.+)$")


def copy_repository(target: Path, fresh: bool = True) -> None:
    """The files git knows (tracked or not ignored): no caches; an earlier run's results are
    kept unless `fresh` (copies keep their times, so mutmut sees unchanged sources as such)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    if fresh:
        shutil.rmtree(target, ignore_errors=True)
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def mutmut_config(files: list[str], tests: list[str]) -> str:
    copied = ["app.py", "collections.json", "precomputed", "assets", "recipes", "bench"]
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["retrieval", "webapp"]\n'
        f"only_mutate = {json.dumps(files)}\n"
        f"also_copy = {json.dumps(copied)}\n"
        'pytest_add_cli_args = ["-p", "no:randomly", "-q", "-x", "-m", "not browser and not slow"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'process_isolation = "forkserver"\n'  # torch is not fork-safe once its threads run
    )


def run_module(key: str, children: int, work: Path, survivors_only: bool) -> dict[str, str]:
    """Mutate and test one module; `survivors_only` re-tests only the mutants the last run in
    `work` left alive (tests were only added since, so a mutant once killed stays killed).

    mutmut forgets every verdict when the test selection changes, so the verdicts are kept
    in `work`/results.json and merged here."""
    files, tests = TARGETS[key]
    previous = saved_results(work) if survivors_only else {}
    again = [name for name, status in previous.items() if status not in CAUGHT]
    copy_repository(work, fresh=not survivors_only)
    with open(work / "pyproject.toml", "a") as config:
        config.write(mutmut_config(files, tests))
    if not survivors_only or again:
        with open(work / "mutmut.log", "w") as out:
            run = ["mutmut", "run", "--max-children", str(children), *again]
            subprocess.run(run, cwd=work, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    current = read_mutmut(work)
    if survivors_only:
        status = {**previous, **{name: current.get(name, "not checked") for name in again}}
    else:
        status = current
    if not status or "not checked" in status.values():
        sys.exit(f"mutmut left mutants of {key} unchecked: see {work / 'mutmut.log'}")
    (work / RESULTS).write_text(json.dumps(status, indent=1, ensure_ascii=False))
    return status


def saved_results(work: Path) -> dict[str, str]:
    return (
        json.loads((work / RESULTS).read_text()) if (work / RESULTS).exists() else read_mutmut(work)
    )


def read_mutmut(work: Path) -> dict[str, str]:
    """mutant name -> status, as mutmut's own records in `work` hold them."""
    listed = subprocess.run(
        ["mutmut", "results", "--all", "true"], cwd=work, env=ENV, capture_output=True, text=True
    ).stdout
    return {m[1]: m[2] for m in map(RESULT_LINE.match, listed.splitlines()) if m}


def mutant_diff(work: Path, name: str) -> str:
    shown = subprocess.run(
        ["mutmut", "show", name], cwd=work, capture_output=True, text=True
    ).stdout
    changed = [
        line for line in shown.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]  # fmt: skip
    return " / ".join(line.strip() for line in changed)


def score(status: dict[str, str]) -> tuple[int, int, float]:
    counts = Counter(status.values())
    caught = sum(counts[kind] for kind in CAUGHT)
    return caught, len(status), caught / len(status)


def report(results: dict, before: dict, reasons: dict[str, str], work: Path) -> str:
    lines = [
        "Each module is mutated by mutmut 3 in its own copy of the repository and run against the "
        "tests written for it (the second column); killed = those tests fail (or time out). "
        f"Goal: at least {GOAL:.0%} per module. 'Before' is a full run on the tests as they "
        "were when this work began (`--save-before`); the scores are a full run followed by "
        "`--survivors-only` re-runs as tests were added (a killed mutant stays killed: tests were "
        "only added). A survivor is either explained below or marked **unexplained**.\n",
        "| module | tests | mutants | killed | survived | not re-run | score | before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, status in results.items():
        files, tests = TARGETS[key]
        counts = Counter(status.values())
        caught, total, rate = score(status)
        was = f"{before[key]['score']:.1%}" if key in before else "-"
        names = ", ".join(Path(t).stem for t in tests)
        lines.append(
            f"| {', '.join(files)} | {names} | {total} | {caught} | {counts['survived']} | "
            f"{counts['not re-run'] + counts['no tests']} | **{rate:.1%}** | {was} |"
        )
    lines += ["", "Surviving mutants, each with why it is kept:", ""]
    for key, status in results.items():
        for name in sorted(n for n, s in status.items() if s not in CAUGHT):
            reason = reasons.get(name, "**unexplained**")
            lines.append(
                f"- `{name}` ({status[name]}): `{mutant_diff(work / key, name)}` - {reason}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--before", type=Path, default=Path(__file__).with_name("mutation_before.json")
    )
    parser.add_argument(
        "--save-before", type=Path, help="write the scores here instead of a report"
    )
    parser.add_argument(
        "--survivors-only", action="store_true", help="re-test only what the last run left alive"
    )
    parser.add_argument("--report-only", action="store_true", help="report the runs in --work")
    parser.add_argument("--work", type=Path, default=WORK, help="where the copies are made")
    args = parser.parse_args()
    results = {}
    for key in args.modules:
        if args.report_only:
            results[key] = saved_results(args.work / key)
        else:
            results[key] = run_module(key, args.children, args.work / key, args.survivors_only)
        caught, total, rate = score(results[key])
        print(f"{key}: {caught}/{total} killed ({rate:.1%})", flush=True)
    if args.save_before:
        scores = {
            k: dict(zip(("killed", "total", "score"), score(s), strict=True))
            for k, s in results.items()
        }
        args.save_before.write_text(json.dumps(scores, indent=2) + "\n")
        return
    before = json.loads(args.before.read_text()) if args.before.exists() else {}
    reasons = tomllib.loads(SURVIVORS.read_text()) if SURVIVORS.exists() else {}
    write_section(
        "mutation",
        "Mutation testing of the serving core",
        report(results, before, reasons, args.work),
    )


if __name__ == "__main__":
    main()
