"""Shared fixtures. Tests never touch the network: sockets to anything but loopback fail loudly."""

from __future__ import annotations

import os
import socket

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and not (
        host.startswith("127.") or host in {"localhost", "::1"} or self.family == socket.AF_UNIX
    ):
        raise RuntimeError(f"test tried to reach the network: {address!r}")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory):
    """A tiny random open_clip model saved in the local-dir layout, loaded back like a real one."""
    from retrieval.backbone import new_model, save_backbone

    torch.manual_seed(0)
    model, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
    return save_backbone(model, "ShapesCLIP-Micro", tmp_path_factory.mktemp("micro-model"))


@pytest.fixture(scope="session")
def micro_backbone(micro_model_dir):
    from retrieval.backbone import load_backbone

    return load_backbone(str(micro_model_dir), device="cpu")
