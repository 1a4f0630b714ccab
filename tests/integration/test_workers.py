"""Decoding workers die with their parent: a killed server or command leaves no worker holding
memory (they used to live on for minutes after a kill -9)."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Embeds images whose decoding takes a minute each (as a huge photo can), with two workers.
PARENT = """
import sys, time
from pathlib import Path
from PIL import Image
import retrieval.embed as embed
from retrieval.backbone import load_backbone, new_model, save_backbone
folder = Path(sys.argv[1])
for n in range(64):
    Image.new("RGB", (32, 32), (n * 4, 0, 0)).save(folder / f"{n}.png")
model, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
backbone = load_backbone(str(save_backbone(model, "ShapesCLIP-Micro", folder / "model")), device="cpu")
slow = embed._ImageFiles.decode
embed._ImageFiles.decode = lambda self, path: (time.sleep(60), slow(self, path))[1]  # a huge image
print("started", flush=True)
embed.embed_files(backbone, sorted(folder.glob("*.png")), batch_size=4, num_workers=2, progress=False)
"""


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_text():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_workers_do_not_outlive_a_killed_parent(tmp_path):
    marker = f"workers-{uuid.uuid4().hex}"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path), marker],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout.readline().strip() == "started"
    deadline = time.time() + 60
    while len(processes_with(marker)) < 3 and time.time() < deadline:  # parent + 2 workers
        time.sleep(0.2)
    assert len(processes_with(marker)) >= 3, "the workers never started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while processes_with(marker) and time.time() < deadline:
        time.sleep(0.2)
    left = processes_with(marker)
    for pid in left:  # do not leave them behind even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} worker(s) still alive 10 s after the parent was killed"
