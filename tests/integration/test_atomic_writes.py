"""Index writes are atomic: a writer killed at any moment leaves a complete index that loads.

A forked child rewrites the index in a loop (write_version: new version folder, then CURRENT is
flipped with os.replace) and is SIGKILLed at random moments. After every kill the index must load,
and the loaded version must be internally consistent: as many vectors as items, every item and
vector from the same generation, the manifest count matching. Fork (not spawn) keeps each child's
start instant, so many kills fit in a few seconds.
"""

import multiprocessing
import os
import random
import signal
import time

import numpy as np
import pytest

from retrieval.index import FORMAT_VERSION, Index, write_version

DIM = 8
MANIFEST = {"format": FORMAT_VERSION, "model_spec": "test", "dim": DIM,
            "preprocessing": "standard", "index_type": "flat", "index_params": {}}  # fmt: skip


def generation(directory, number: int) -> None:
    """Version `number`: a size that varies, every item and vector marked with the number."""
    count = 5 + number % 17
    items = [
        {"id": f"g{number}-{i}", "title": f"item {i}", "generation": number} for i in range(count)
    ]
    vectors = np.full((count, DIM), float(number % 1000), dtype=np.float32)
    write_version(directory, MANIFEST, items, vectors)


def rewrite_forever(directory, start: int) -> None:
    number = start
    while True:
        number += 1
        generation(directory, number)


def check_consistent(directory) -> int:
    index = Index.load(directory)
    generations = {item["generation"] for item in index.items}
    assert len(generations) == 1, generations
    (number,) = generations
    assert index.manifest["count"] == len(index.items) == index.vectors.shape[0]
    assert np.all(np.asarray(index.vectors) == float(number % 1000))
    return number


def wait_for_generation(directory, above: int, timeout: float = 60.0) -> int:
    """The first consistent generation past `above` that the index serves; no timing assumed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            number = check_consistent(directory)
        except FileNotFoundError:  # the version CURRENT named was pruned meanwhile: read again
            continue
        if number > above:
            return number
        time.sleep(0.005)
    raise AssertionError(f"no version past {above} within {timeout} s")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_killing_a_writer_at_random_moments_never_breaks_the_index(tmp_path):
    directory = tmp_path / "index"
    generation(directory, 0)
    context = multiprocessing.get_context("fork")
    rng = random.Random(1234)
    seen, start = set(), 0
    for _round in range(25):
        writer = context.Process(target=rewrite_forever, args=(directory, start), daemon=True)
        writer.start()
        wait_for_generation(directory, start)  # it got a version out: kill it in a later one
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        assert writer.exitcode == -signal.SIGKILL
        number = check_consistent(directory)
        seen.add(number)
        start = number + 1000  # the next writer's generations never repeat earlier ones
    assert len(seen) == 25  # every round served its own writer's version
    leftovers = [p.name for p in (directory / "versions").iterdir() if not p.name.startswith(".")]
    assert len(leftovers) <= 3  # old versions are pruned; only unfinished staging dirs may remain


def test_reader_sees_whole_versions_while_a_writer_runs(tmp_path):
    """Loads racing with writes (same process family, no kills) always see a whole version."""
    directory = tmp_path / "index"
    generation(directory, 0)
    writer = multiprocessing.get_context("fork").Process(
        target=rewrite_forever, args=(directory, 0), daemon=True
    )
    writer.start()
    try:
        newest = 0
        for _ in range(20):  # 20 loads, each of a later version than the one before
            newest = wait_for_generation(directory, newest)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
    assert newest >= 20
