"""Load test of the REST API on loopback: many concurrent clients mixing text, image and composed search.

    python -m bench.load_test                      # Shapes collection, 32 clients, 60 s
    python -m bench.load_test --clients 64 --duration 120
    python -m bench.load_test --fixture            # no shipped data: a generated collection, random model

The server runs in its own process (uvicorn, the full app with the Gradio UI mounted unless
--api-only), so client and server do not share a GIL. Clients are asyncio tasks over one httpx
connection pool; each loops until the deadline, picking a request kind at random. Any non-200
answer or transport error counts as an error. Results go to BENCHMARKS.md (section api_load).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("text", "image", "composed")
TEXT_QUERIES = [
    "a large red circle", "a small blue square on the left", "a green triangle and a yellow circle",
    "two shapes", "a purple star", "something round", "a big orange shape on the right",
    "a tiny square in the middle", "three objects", "a blue triangle",
]  # fmt: skip
EDITS = ["make it blue", "add a red circle", "remove the square", "make the shape larger",
         "move it to the left", "change the triangle into a star"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- server ----------------------------------------------------------------------------------
def serve(port: int, api_only: bool) -> None:
    """Child process: the app as `python app.py` would run it, on a loopback port."""
    import uvicorn

    from retrieval.catalog import Catalog
    from retrieval.config import Settings
    from webapp.api import create_api

    settings = Settings.from_env()
    if api_only:
        app = create_api(Catalog.from_file(settings.collections_file, settings), settings)
    else:
        from app import create_app

        app = create_app(settings=settings)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_server(port: int, api_only: bool, env: dict) -> subprocess.Popen:
    command = [sys.executable, "-m", "bench.load_test", "--serve", str(port)]
    if api_only:
        command.append("--api-only")
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})


def wait_ready(base: str, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not start in time")


def fixture_catalog(folder: Path) -> Path:
    """A generated Shapes collection indexed with a random ShapesCLIP-Tiny: no shipped data needed."""
    import torch

    from retrieval.backbone import load_backbone, new_model, save_backbone
    from retrieval.index import build_index
    from retrieval.shapes.world import write_dataset

    torch.manual_seed(0)
    model, _, _ = new_model("ShapesCLIP-Tiny", device="cpu")
    model_dir = save_backbone(model, "ShapesCLIP-Tiny", folder / "model")
    write_dataset(folder / "data", {"test": 40})
    backbone = load_backbone(str(model_dir), device="cpu")
    build_index(folder / "data", folder / "index", backbone, progress=False)
    spec = {
        "name": "shapes",
        "title": "Shapes (generated, random model)",
        "index": str(folder / "index"),
    }
    path = folder / "collections.json"
    path.write_text(json.dumps({"collections": [spec]}))
    return path


# -- clients ---------------------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.errors: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.examples: list[str] = []

    def add(self, kind: str, seconds: float, error: str | None) -> None:
        if error is None:
            self.latencies[kind].append(seconds)
            return
        self.errors[kind] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {error}")


async def one_request(client: httpx.AsyncClient, kind: str, rng: random.Random, data: dict):
    url = f"/api/collections/{data['collection']}/search/{kind}"
    params = {"k": rng.choice([5, 10, 20])}
    if kind == "text":
        params["q"] = rng.choice(data["texts"])
        return await client.get(url, params=params)
    use_upload = rng.random() < 0.5
    form = {} if use_upload else {"item_id": rng.choice(data["ids"])}
    files = {"file": ("query.png", rng.choice(data["images"]), "image/png")} if use_upload else None
    if kind == "composed":
        form["text"] = rng.choice(EDITS)
    return await client.post(url, params=params, data=form, files=files)


async def client_loop(client, number: int, deadline: float, mix: list[float], data, recorder):
    rng = random.Random(number)
    while time.monotonic() < deadline:
        kind = rng.choices(KINDS, weights=mix)[0]
        started = time.perf_counter()
        try:
            response = await one_request(client, kind, rng, data)
            error = (
                None
                if response.status_code == 200
                else f"{response.status_code} {response.text[:200]}"
            )
        except httpx.HTTPError as exc:
            cause = exc.__cause__ or exc.__context__
            error = f"{type(exc).__name__}({exc!r}, cause {cause!r}) after {time.perf_counter() - started:.2f} s"
        recorder.add(kind, time.perf_counter() - started, error)


async def prepare(client: httpx.AsyncClient, collection: str) -> dict:
    """Warm the collection up and collect item ids, upload images and text queries."""
    info = (await client.get(f"/api/collections/{collection}")).raise_for_status().json()
    page = (
        (await client.get(f"/api/collections/{collection}/items", params={"limit": 200}))
        .raise_for_status()
        .json()
    )
    ids = [item["id"] for item in page["items"]]
    images = []
    for item in page["items"][:12]:
        images.append((await client.get(item["image_url"])).raise_for_status().content)
    return {
        "collection": collection,
        "ids": ids,
        "images": images,
        "texts": list(info.get("examples") or []) + TEXT_QUERIES,
        "info": info,
    }


async def run_load(base: str, collection: str, clients: int, duration: float, mix: list[float]):
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        data = await prepare(client, collection)
        for kind in KINDS:  # one of each before timing: first calls compile / allocate
            (await one_request(client, kind, random.Random(0), data)).raise_for_status()
        recorder = Recorder()
        started = time.monotonic()
        deadline = started + duration
        await asyncio.gather(
            *(client_loop(client, n, deadline, mix, data, recorder) for n in range(clients))
        )
        elapsed = time.monotonic() - started
    return data, recorder, elapsed


# -- report ----------------------------------------------------------------------------------
def percentiles(values: list[float]) -> list[float]:
    if not values:
        return [float("nan")] * 3
    return [float(np.percentile(values, q)) * 1000 for q in (50, 95, 99)]


def report(args, data, recorder: Recorder, elapsed: float, device: str) -> str:
    from retrieval.eval.report import markdown_table

    rows = []
    every = [v for kind in KINDS for v in recorder.latencies[kind]]
    for kind in (*KINDS, "all"):
        values = every if kind == "all" else recorder.latencies[kind]
        errors = sum(recorder.errors.values()) if kind == "all" else recorder.errors[kind]
        p50, p95, p99 = percentiles(values)
        rows.append(
            [
                kind,
                len(values),
                errors,
                f"{len(values) / elapsed:.1f}",
                f"{p50:.0f}",
                f"{p95:.0f}",
                f"{p99:.0f}",
            ]
        )
    info = data["info"]
    table = markdown_table(
        ["request", "ok", "errors", "throughput (req/s)", "p50 (ms)", "p95 (ms)", "p99 (ms)"], rows
    )
    lines = [
        f"{args.clients} concurrent clients for {elapsed:.0f} s against `{info['name']}` "
        f"({info['count']} items, model `{info['model']}`, {info['index_type']} index) on loopback; "
        f"server: {'API only' if args.api_only else 'full app (Gradio UI mounted)'}, one uvicorn "
        f"process, device {device}. Mix text/image/composed = {args.mix}; image and composed "
        "queries are half uploads (PNG from the collection), half item ids; k in {5, 10, 20}.",
        "",
        table,
        "",
        f"Errors: {sum(recorder.errors.values())}"
        + ("" if not recorder.examples else " - e.g. " + "; ".join(recorder.examples)),
    ]
    if args.fixture:
        lines.append(
            "\nCollection: generated with `--fixture` (random model): timings only, not quality."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", default="shapes")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--mix", default="0.5,0.25,0.25", help="weights of text,image,composed")
    parser.add_argument(
        "--api-only", action="store_true", help="serve the API without the Gradio UI"
    )
    parser.add_argument("--fixture", action="store_true", help="generated collection, random model")
    parser.add_argument("--no-report", action="store_true", help="do not write BENCHMARKS.md")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.api_only)
        return 0
    mix = [float(part) for part in args.mix.split(",")]
    env = {"SR_API_KEY": "", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as scratch:
        if args.fixture:
            env["SR_COLLECTIONS_FILE"] = str(fixture_catalog(Path(scratch)))
            args.collection = "shapes"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(port, args.api_only, env)
        try:
            wait_ready(base, server)
            data, recorder, elapsed = asyncio.run(
                run_load(base, args.collection, args.clients, args.duration, mix)
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    text = report(args, data, recorder, elapsed, device)
    print(text)
    if not args.no_report:
        from bench.report import write_section

        write_section("api_load", "REST API under load", text)
    return 1 if sum(recorder.errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
