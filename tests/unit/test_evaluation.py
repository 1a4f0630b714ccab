"""CIRR / FashionIQ / CIRCO metrics against hand-computed rankings, and the `eval` commands end to end."""

from __future__ import annotations

import json

import pytest
import torch

from retrieval.cli.main import main
from retrieval.composed.baselines import image_only_composer
from retrieval.data.composed import ComposedSplit, Query, read_circo, read_cirr, read_fashioniq
from retrieval.errors import BadInput
from retrieval.eval.composed import evaluate_split
from retrieval.eval.metrics import (
    average_precision_at_k,
    map_at_k,
    paired_bootstrap,
    ranked_positions,
    recall_at_k,
    subset_rank,
    target_ranks,
)
from tests.fabricated import make_circo, make_cirr, make_fashioniq


def run(*argv) -> int:
    return main([str(arg) for arg in argv])


class FeatureHolder:
    """Evaluation needs only `.device` when image features are given (the image-only composer)."""

    device = torch.device("cpu")


# --------------------------------------------------------------------------- metric functions


def test_target_ranks_break_ties_by_gallery_order():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1], [0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    # row 0: target 2 is behind 0.9 and behind the tied, earlier item 0 -> rank 2
    # row 1: target 0 is behind 0.9 only -> rank 1; row 2: all tied, target 3 -> rank 3
    assert target_ranks(scores, torch.tensor([2, 0, 3])).tolist() == [2, 1, 3]


def test_removed_items_never_rank_ahead():
    scores = torch.tensor([[0.9, -torch.inf, 0.3, 0.8]])
    assert target_ranks(scores, torch.tensor([2])).tolist() == [2]
    assert ranked_positions(scores, 4)[0].tolist() == [0, 3, 2, 1]


def test_ranked_lists_agree_with_ranks_under_many_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (30, 25), generator=generator).float()  # heavy ties
    targets = torch.randint(0, 25, (30,), generator=generator)
    order = ranked_positions(scores, 25)
    expected = [order[row].tolist().index(int(targets[row])) for row in range(30)]
    assert target_ranks(scores, targets).tolist() == expected


def test_recall_at_k_by_hand():
    ranks = torch.tensor([0, 3, 10, 60])
    assert recall_at_k(ranks, (1, 5, 10, 50)) == {
        "R@1": 25.0,
        "R@5": 50.0,
        "R@10": 50.0,
        "R@50": 75.0,
    }


def test_subset_rank_only_counts_the_candidates():
    scores = torch.tensor([0.1, 0.95, 0.5, 0.7, 0.5, 0.99])
    # candidates 1, 2, 4 (5 is outside the subset): target 4 ties with 2, which comes first -> rank 2
    assert subset_rank(scores, [4, 2, 1], 4) == 2
    assert subset_rank(scores, [4, 2, 1], 1) == 0


def test_average_precision_divides_by_min_of_ground_truths_and_k():
    # ranked list: hit, miss, hit, miss, hit; 4 ground truths in total (one never retrieved)
    relevant = torch.tensor([[1, 0, 1, 0, 1]])
    ap5 = float(average_precision_at_k(relevant, torch.tensor([4]), 5))
    assert ap5 == pytest.approx((1 / 1 + 2 / 3 + 3 / 5) / 4)
    assert float(average_precision_at_k(relevant, torch.tensor([4]), 2)) == pytest.approx(1 / 2)
    # a single ground truth at rank 3: AP@5 = precision at 3 = 1/3
    assert float(
        average_precision_at_k(torch.tensor([[0, 0, 1, 0, 0]]), torch.tensor([1]), 5)
    ) == pytest.approx(1 / 3)


def test_map_at_k_over_queries():
    ranked = [[7, 1, 2, 8, 3], [5, 6, 0, 0, 0]]
    truths = [{7, 2, 3, 9}, {4}]
    result = map_at_k(ranked, truths, ks=(5,))
    assert result["mAP@5"] == pytest.approx(100 * ((1 + 2 / 3 + 3 / 5) / 4 + 0) / 2)


# --------------------------------------------------------------------------- protocols on given features


def _one_hot_split(
    dataset: str, exclude_reference: bool, queries: list[Query], gallery: list[str]
) -> ComposedSplit:
    return ComposedSplit(
        dataset, "val", queries, {name: None for name in gallery}, gallery, exclude_reference
    )


def _features(gallery: list[str], rows: list[list[float]]):
    return gallery, torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


def test_cirr_protocol_removes_the_reference_and_ranks_the_subset():
    gallery = ["a", "b", "c", "d", "e"]
    # reference a; its nearest images: a itself (removed), e, c, b, d
    rows = [[1, 0, 0], [0.2, 1, 0], [0.6, 0.8, 0], [0, 0, 1], [0.9, 0.1, 0]]
    query = Query("7", "a", ["x"], targets=["c"], members=["a", "b", "c", "d"])
    split = _one_hot_split("cirr", True, [query], gallery)
    result = evaluate_split(
        split, FeatureHolder(), image_only_composer, _features(gallery, rows), progress=False
    )
    metrics = result.metrics
    assert metrics["R@1"] == 0 and metrics["R@5"] == 100  # c is second after e (a removed)
    assert result.ranks.tolist() == [1]  # kept per query, for paired comparisons
    assert metrics["Rs@1"] == 100  # among b, c, d the target c comes first
    assert metrics["mean"] == pytest.approx((0 + 100 + 100 + 100 + 100 + 100 + 100) / 7)
    assert metrics["avg"] == pytest.approx((100 + 100) / 2)


def test_fashioniq_protocol_keeps_the_reference():
    gallery = [f"g{i}" for i in range(12)]
    rows = [[1.0, 0.0]] + [[1.0, 0.01 * i] for i in range(1, 12)]
    # the reference g0 is its own best match and stays in the ranking: target g10 ranks 11th
    query = Query("dress-0", "g0", ["c1", "c2"], targets=["g10"])
    split = _one_hot_split("fashioniq", False, [query], gallery)
    metrics = evaluate_split(
        split, FeatureHolder(), image_only_composer, _features(gallery, rows), progress=False
    ).metrics
    assert metrics == {"R@10": 0.0, "R@50": 100.0}


def test_circo_protocol_map_with_several_ground_truths():
    gallery = ["1", "2", "3", "4", "5", "6"]
    rows = [[1, 0], [0.99, 0.14], [0.95, 0.31], [0.9, 0.44], [0.8, 0.6], [0, 1]]
    # ranking after removing the reference "1": 2, 3, 4, 5, 6; ground truths 3 and 6 (target 3)
    query = Query("0", "1", ["x"], targets=["3", "6"])
    split = _one_hot_split("circo", True, [query], gallery)
    metrics = evaluate_split(
        split, FeatureHolder(), image_only_composer, _features(gallery, rows), progress=False
    ).metrics
    assert metrics["mAP@5"] == pytest.approx(100 * (1 / 2 + 2 / 5) / 2)
    assert metrics["mAP@10"] == pytest.approx(metrics["mAP@5"])
    assert metrics["R@5"] == 100


# --------------------------------------------------------------------------- commands end to end


def test_eval_cirr_val_and_test_submissions(tmp_path, micro_model_dir, capsys):
    root = make_cirr(tmp_path / "cirr")
    out = tmp_path / "val"
    code = run(
        "eval",
        "cirr",
        "--root",
        root,
        "--model",
        micro_model_dir,
        "--method",
        "sum",
        "--method",
        "image",
        "--method",
        "text",
        "--out",
        out,
        "--quiet",
        "--cache-dir",
        tmp_path / "cache",
    )
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    for method in ("sum", "image", "text"):
        metrics = report["metrics"][method]
        assert set(metrics) == {"R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "mean", "avg"}
        assert metrics["R@50"] == 100 and metrics["Rs@3"] == 100  # galleries of 8 and subsets of 3
    assert "| sum |" in (out / "results.md").read_text()
    submissions = tmp_path / "test"
    assert (
        run(
            "eval",
            "cirr",
            "--root",
            root,
            "--model",
            micro_model_dir,
            "--split",
            "test1",
            "--out",
            submissions,
            "--quiet",
            "--cache-dir",
            tmp_path / "cache",
        )
        == 0
    )
    recall = json.loads((submissions / "recall_submission.json").read_text())
    subset = json.loads((submissions / "recall_subset_submission.json").read_text())
    assert recall.pop("version") == "rc2" and recall.pop("metric") == "recall"
    assert subset.pop("version") == "rc2" and subset.pop("metric") == "recall_subset"
    test = read_cirr(root, "test1")
    assert set(recall) == set(subset) == {query.id for query in test.queries}
    for query in test.queries:
        assert len(recall[query.id]) == 7 and query.reference not in recall[query.id]
        assert len(subset[query.id]) == 3 and query.reference not in subset[query.id]
        assert set(subset[query.id]) <= set(query.members)


def test_eval_cirr_test_needs_an_output_folder(tmp_path, micro_model_dir, capsys):
    root = make_cirr(tmp_path / "cirr", {"test1": 1})
    assert (
        run(
            "eval",
            "cirr",
            "--root",
            root,
            "--model",
            micro_model_dir,
            "--split",
            "test1",
            "--quiet",
            "--no-cache",
        )
        == 1
    )
    assert "--out" in capsys.readouterr().err


def test_eval_fashioniq_per_category_and_average(tmp_path, micro_model_dir):
    root = make_fashioniq(tmp_path / "fiq")
    out = tmp_path / "fiq.json"
    assert (
        run(
            "eval",
            "fashioniq",
            "--root",
            root,
            "--model",
            micro_model_dir,
            "--out",
            out,
            "--quiet",
            "--preprocessing",
            "targetpad",
            "--no-cache",
        )
        == 0
    )
    metrics = json.loads(out.read_text())["metrics"]["sum"]
    for category in ("dress", "shirt", "toptee"):
        assert metrics[f"{category}/R@50"] == 100  # five images per gallery
    assert metrics["R@10"] == pytest.approx(
        sum(metrics[f"{c}/R@10"] for c in ("dress", "shirt", "toptee")) / 3
    )
    assert metrics["score"] == pytest.approx((metrics["R@10"] + metrics["R@50"]) / 2)
    assert len(read_fashioniq(root, "dress", "val").queries) == 5


def test_eval_circo_val_and_submission(tmp_path, micro_model_dir):
    root = make_circo(tmp_path / "circo")
    out = tmp_path / "circo"
    assert (
        run(
            "eval",
            "circo",
            "--root",
            root,
            "--model",
            micro_model_dir,
            "--out",
            out,
            "--quiet",
            "--no-cache",
        )
        == 0
    )
    metrics = json.loads((out / "results.json").read_text())["metrics"]["sum"]
    assert {"mAP@5", "mAP@10", "mAP@25", "mAP@50"} <= set(metrics)
    assert 0 < metrics["mAP@50"] <= 100
    assert (
        run(
            "eval",
            "circo",
            "--root",
            root,
            "--model",
            micro_model_dir,
            "--split",
            "test",
            "--out",
            out,
            "--quiet",
            "--no-cache",
        )
        == 0
    )
    submission = json.loads((out / "circo_test_submission.json").read_text())
    test = read_circo(root, "test")
    assert set(submission) == {query.id for query in test.queries}
    for query in test.queries:
        ranked = submission[query.id]
        assert all(isinstance(image_id, int) for image_id in ranked)
        assert len(ranked) == 11 and int(query.reference) not in ranked


def test_eval_combiner_method_needs_weights(tmp_path, micro_model_dir, capsys):
    root = make_cirr(tmp_path / "cirr", {"val": 1})
    assert (
        run(
            "eval",
            "cirr",
            "--root",
            root,
            "--model",
            micro_model_dir,
            "--method",
            "combiner",
            "--quiet",
            "--no-cache",
        )
        == 1
    )
    assert "--combiner" in capsys.readouterr().err


def test_paired_bootstrap_interval_brackets_the_gain():
    same = torch.tensor([1, 0, 1, 0] * 50)
    assert paired_bootstrap(same, same) == (0.0, 0.0)
    assert paired_bootstrap(torch.ones(200), torch.zeros(200)) == (1.0, 1.0)
    # the method wins 30 queries and loses 10 of 400: gain 0.05, interval around it, above zero
    method, base = torch.zeros(400), torch.zeros(400)
    method[:30], base[30:40] = 1, 1
    low, high = paired_bootstrap(method, base)
    assert 0 < low < 0.05 < high < 0.1
    with pytest.raises(BadInput):
        paired_bootstrap(torch.zeros(0), torch.zeros(0))
