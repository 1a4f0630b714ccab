"""The shared training core: losses, what learns, schedule, checkpoints, resume, the CLI."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from retrieval.backbone import load_backbone, new_model
from retrieval.errors import BadInput
from retrieval.eval.metrics import feature_ranks, recall_at_k
from retrieval.train import clip as clip_training
from retrieval.train import composed as composed_training
from retrieval.train import loop as loop
from retrieval.train.loop import TrainConfig


def test_clip_loss_is_low_for_matching_pairs_and_chance_for_random():
    torch.manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(16, 32), dim=-1)
    matched = clip_training.clip_loss(features, features, logit_scale=100.0)
    shuffled = clip_training.clip_loss(features, features.roll(1, dims=0), logit_scale=100.0)
    uniform = clip_training.clip_loss(features, features, logit_scale=0.0)
    assert matched < 0.01
    assert shuffled > 10
    assert uniform == pytest.approx(math.log(16), rel=1e-4)


def test_clip_loss_is_symmetric_in_images_and_texts():
    torch.manual_seed(1)
    images, texts = torch.randn(8, 16), torch.randn(8, 16)
    assert clip_training.clip_loss(images, texts, 10.0) == pytest.approx(
        float(clip_training.clip_loss(texts, images, 10.0))
    )


def test_composed_loss_rewards_the_matching_target():
    torch.manual_seed(2)
    targets = torch.randn(8, 16)
    assert composed_training.composed_loss(targets, targets) < 0.01
    assert composed_training.composed_loss(targets, targets.roll(1, dims=0)) > 5


def test_set_trainable_text_tower_only_freezes_the_image_tower():
    model, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
    count = loop.set_trainable(model, towers="text", logit_scale=False)
    assert count > 0
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert model.token_embedding.weight.requires_grad and model.text_projection.requires_grad
    assert not model.logit_scale.requires_grad


def test_set_trainable_last_blocks_keeps_earlier_blocks_frozen():
    model, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
    loop.set_trainable(model, towers="both", last_blocks=1)
    image_blocks, text_blocks = model.visual.transformer.resblocks, model.transformer.resblocks
    assert all(p.requires_grad for p in image_blocks[-1].parameters())
    assert not any(p.requires_grad for p in image_blocks[0].parameters())
    assert all(p.requires_grad for p in text_blocks[-1].parameters())
    assert not any(p.requires_grad for p in text_blocks[0].parameters())
    assert model.visual.proj.requires_grad and model.text_projection.requires_grad
    assert (
        not model.token_embedding.weight.requires_grad
        and not model.visual.conv1.weight.requires_grad
    )


def test_set_trainable_rejects_unknown_tower():
    model, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
    with pytest.raises(BadInput):
        loop.set_trainable(model, towers="audio")


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    rates = [loop.learning_rate(cfg, step) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] == pytest.approx(0.1, abs=0.01)
    assert loop.learning_rate(TrainConfig(lr=0.5, warmup_steps=0, schedule="constant"), 999) == 0.5


def test_composed_defaults_follow_the_clip4cir_recipe():
    cfg = TrainConfig.composed_defaults()
    assert (cfg.lr, cfg.betas, cfg.eps, cfg.batch_size) == (2e-6, (0.9, 0.999), 1e-7, 128)


class _Line(torch.nn.Module):
    """y = a x + b: small enough to check the loop's arithmetic exactly."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(1))
        self.b = torch.nn.Parameter(torch.zeros(1))


def _line_loss(model, batch):
    x, y = batch
    return ((model.a * x + model.b - y) ** 2).mean()


def _line_loader():
    x = torch.linspace(-1, 1, 64)
    data = torch.utils.data.TensorDataset(x, 3 * x + 1)
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, drop_last=True)


def _line_cfg(tmp_path, **overrides):
    base = dict(
        steps=40,
        lr=0.1,
        weight_decay=0.0,
        warmup_steps=0,
        schedule="constant",
        grad_clip=0,
        validate_every=10,
        select_metric="score",
        out_dir=str(tmp_path),
        device="cpu",
        log_every=5,
    )
    return TrainConfig(**{**base, **overrides})


def _line_validate(model):
    return {"score": -abs(float(model.a) - 3) - abs(float(model.b) - 1)}


def test_train_loop_learns_validates_and_keeps_the_best(tmp_path):
    model = _Line()
    result = loop.train_loop(
        model,
        _line_loader(),
        _line_cfg(tmp_path),
        _line_loss,
        validate=_line_validate,
        progress=False,
    )
    assert model.a.item() == pytest.approx(3, abs=0.2) and model.b.item() == pytest.approx(
        1, abs=0.2
    )
    assert [row["step"] for row in result.history] == [10, 20, 30, 40]
    best = max(result.history, key=lambda row: row["score"])
    assert result.best_step == best["step"]
    saved = json.loads((tmp_path / "best" / loop.STATE_FILE).read_text())
    assert saved["step"] == result.best_step and saved["config"]["lr"] == 0.1
    assert set(load_file(str(tmp_path / "best" / loop.MODEL_FILE))) == {"a", "b"}


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = _Line()
    loop.train_loop(straight, _line_loader(), _line_cfg(tmp_path / "a"), _line_loss, progress=False)
    first = _Line()
    loop.train_loop(
        first, _line_loader(), _line_cfg(tmp_path / "b", steps=20), _line_loss, progress=False
    )
    resumed = _Line()
    cfg = _line_cfg(tmp_path / "c", resume=str(tmp_path / "b" / "last"))
    loop.train_loop(resumed, _line_loader(), cfg, _line_loss, progress=False)
    assert torch.equal(resumed.a, straight.a) and torch.equal(resumed.b, straight.b)
    assert not torch.equal(first.a, straight.a)


def test_checkpoint_round_trip_restores_weights_and_optimizer(tmp_path):
    model = _Line()
    optimizer = loop.make_optimizer(model, TrainConfig(lr=0.1))
    _line_loss(model, next(iter(_line_loader()))).backward()
    optimizer.step()
    loop.save_checkpoint(
        tmp_path, model, TrainConfig(lr=0.1), step=7, metrics={"m": 1.0}, optimizer=optimizer
    )
    restored, restored_optimizer = _Line(), loop.make_optimizer(_Line(), TrainConfig(lr=0.1))
    restored_optimizer = loop.make_optimizer(restored, TrainConfig(lr=0.1))
    info = loop.load_checkpoint(tmp_path, restored, restored_optimizer)
    assert info["step"] == 7 and info["metrics"] == {"m": 1.0}
    assert torch.equal(restored.a, model.a)
    assert restored_optimizer.state_dict()["state"][0]["exp_avg"].equal(
        optimizer.state_dict()["state"][0]["exp_avg"]
    )


def test_feature_ranks_count_ranks_and_exclude_the_reference():
    gallery = torch.eye(4)
    queries = torch.tensor([[1.0, 0.9, 0, 0], [0, 1.0, 0, 0]])
    ranks = feature_ranks(queries, gallery, [1, 1])
    assert ranks.tolist() == [1, 0]
    assert recall_at_k(ranks, ks=(1, 2)) == {"R@1": 50.0, "R@2": 100.0}
    excluded = feature_ranks(queries, gallery, [1, 1], exclude=[0, -1])
    assert recall_at_k(excluded, ks=(1,)) == {"R@1": 100.0}


def test_train_composed_moves_the_weights_with_clip4cir_defaults():
    torch.manual_seed(0)
    model, _, _ = new_model("ShapesCLIP-Micro", device="cpu")
    before = model.visual.proj.detach().clone()
    tokens = torch.randint(1, 400, (8, 32))
    batch = (torch.randn(8, 3, 32, 32), tokens, torch.randn(8, 3, 32, 32))
    cfg = TrainConfig.composed_defaults(steps=2, lr=1e-3, device="cpu")
    result = composed_training.train_composed(model, [batch], cfg, progress=False)
    assert result.step == 2
    assert not torch.equal(before, model.visual.proj.detach())
    assert not model.logit_scale.requires_grad


def test_train_clip_command_on_a_pairs_csv_exports_a_loadable_model(tmp_path):
    from retrieval.cli.main import main

    rows = []
    for index, (name, colour) in enumerate([("red", (255, 0, 0)), ("blue", (0, 0, 255))] * 4):
        Image.new("RGB", (40, 40), colour).save(tmp_path / f"{index}.png")
        rows.append({"file": f"{index}.png", "caption": f"a {name} square"})
    with (tmp_path / "pairs.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "model"
    code = main(
        [
            "train-clip",
            "--data",
            str(tmp_path / "pairs.csv"),
            "--arch",
            "ShapesCLIP-Micro",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--val-pairs",
            str(tmp_path / "pairs.csv"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--fp16",
        ]
    )
    assert code == 0
    report = json.loads((out / "training.json").read_text())
    assert report["config"]["steps"] == 3 and report["fp16_weights"] is True
    assert "t2i_R@1" in report["best_metrics"]
    backbone = load_backbone(str(out), device="cpu")
    assert backbone.encode_texts(["a red square"]).shape == (1, 64)


def test_train_clip_command_reports_missing_data(tmp_path, capsys):
    from retrieval.cli.main import main

    assert (
        main(
            [
                "train-clip",
                "--data",
                str(tmp_path / "nope.csv"),
                "--arch",
                "ShapesCLIP-Micro",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 1
    )
    assert "not found" in capsys.readouterr().err
