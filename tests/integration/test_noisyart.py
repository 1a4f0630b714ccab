"""NoisyArt protocol: the reader on a fabricated dataset in the real layout, every evaluation task,
hand-checked mAP, the ResNet-50 baseline, the class-folder reader and a short fine-tuning run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from retrieval.cli.main import main
from retrieval.data.art import (
    ArtClass,
    folder_to_uri,
    parse_split_line,
    read_class_folders,
    read_noisyart,
    title_prompt,
)
from retrieval.errors import BadInput, NotFound
from retrieval.eval import art as art_eval
from retrieval.eval.art import EvalOptions, evaluate, linear_probe_accuracy
from retrieval.eval.metrics import average_precisions, mean_average_precision, topk_accuracy
from retrieval.train.art import DistinctClassBatches

COLOURS = {
    "Red": (220, 30, 30),
    "Green": (30, 170, 60),
    "Blue": (40, 60, 220),
    "Yellow": (230, 210, 40),
    "Purple": (130, 50, 170),
}
TRAIN_FILES = ("seed_000000", "google_000000", "google_000001", "flickr_000000")


def artwork_uri(colour: str) -> str:
    return f"http://dbpedia.org/resource/The_{colour}_Disc"


def folder_name(number: int, colour: str) -> str:
    return f"{number:04d}_" + artwork_uri(colour).replace("/", "^")


def draw(colour: str, variant: int) -> Image.Image:
    """A disc of the class colour, shifted per variant: classes differ by colour only."""
    image = Image.new("RGB", (40, 40), (240, 240, 240))
    offset = variant % 4
    ImageDraw.Draw(image).ellipse((6 + offset, 6, 30 + offset, 30), fill=COLOURS[colour])
    return image


def make_noisyart(root: Path, metadata_as_dict: bool = False) -> Path:
    """Five trainval classes (Purple has no metadata entry), four test classes numbered differently,
    one metadata-only class; split lists name .jpg files while the images are PNG (the r255 release)."""
    trained = ["Red", "Green", "Blue", "Yellow", "Purple"]
    entries = [
        {
            "uri": artwork_uri(colour),
            "title": f"The {colour} Disc",
            "description": f"a painting of a single {colour.lower()} disc on a pale ground",
            "_authors": [{"name": f"Master of {colour}"}],
            "comment": "",
            "_museums": [],
        }
        for colour in trained[:4]
    ] + [
        {
            "uri": "http://dbpedia.org/resource/Lost_Work",
            "title": "Lost Work",
            "description": "",
            "_authors": [],
        }
    ]
    data = {entry["uri"]: entry for entry in entries} if metadata_as_dict else entries
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.json").write_text(json.dumps(data))
    lines = {"train": [], "val": [], "boot": []}
    for number, colour in enumerate(trained, start=1):
        folder = root / "trainval_3120" / folder_name(number, colour)
        folder.mkdir(parents=True)
        for variant, stem in enumerate(TRAIN_FILES):
            draw(colour, variant).save(folder / f"{stem}.png")
            split = "val" if stem == "flickr_000000" else "train"
            lines[split].append(f"{folder.name}/{stem}.jpg")
        lines["boot"].append(f"{folder.name}/seed_000000.jpg")
        folder200 = root / "trainval_200" / folder_name(number, colour)
        if colour != "Purple":
            folder200.mkdir(parents=True)
            for variant in range(3):
                draw(colour, variant + 1).save(folder200 / f"google_{variant:06d}.png")
    for number, colour in enumerate(["Yellow", "Blue", "Green", "Red"], start=1):
        folder = root / "test_200" / folder_name(number, colour)
        folder.mkdir(parents=True)
        for variant in range(3):
            draw(colour, variant).save(folder / f"{variant:06d}.png")
    splits = root / "splits" / "trainval_3120"
    splits.mkdir(parents=True)
    lines["train"].append(f"{folder_name(1, 'Red')}/google_000099.jpg")  # listed, not on disk
    for name, rows in lines.items():
        # no trailing newline, like the original lists
        (splits / f"{name}.txt").write_text("\n".join(rows))
    (splits / "trainval.txt").write_text("\r\n".join(lines["train"] + lines["val"]) + "\r\n\r\n")
    return root


@pytest.fixture(scope="module")
def noisyart_root(tmp_path_factory):
    return make_noisyart(tmp_path_factory.mktemp("noisyart"))


class ColourOracle:
    """Features that see the disc colour and read the colour word: the tasks must then be perfect."""

    has_text = True
    name = "colour-oracle"

    def __init__(self):
        self.transform = lambda image: torch.tensor(np.asarray(image, dtype=np.float32)).permute(
            2, 0, 1
        )

    @staticmethod
    def _vector(rgb) -> np.ndarray:
        vector = np.asarray(rgb, dtype=np.float32) - 128
        return vector / np.linalg.norm(vector)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        centre = pixels[:, :, 18, 18 + 1].numpy()  # inside the disc for every variant
        return torch.tensor(np.stack([self._vector(rgb) for rgb in centre]))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        def colour_of(text):
            return next(
                (rgb for name, rgb in COLOURS.items() if name.lower() in text.lower()),
                (128, 128, 200),
            )

        return np.stack([self._vector(colour_of(text)) for text in texts])


# --------------------------------------------------------------------------- reader


def test_folder_names_and_split_lines_parse_tolerantly():
    folder = "0007_http:^^dbpedia.org^resource^Saint_George_(Raphael)"
    assert folder_to_uri(folder) == "http://dbpedia.org/resource/Saint_George_(Raphael)"
    expected = (folder, "google_000003")
    for line in (
        f"{folder}/google_000003.jpg",
        f"  ./{folder}/google_000003.png\r",
        f"{folder}\\google_000003.jpg",
        f"trainval_3120/{folder}/google_000003.jpg",
        f"{folder}/google_000003.jpg 17",
    ):
        assert parse_split_line(line) == expected
    assert parse_split_line("") is None and parse_split_line("no-folder.jpg") is None


def test_folder_splits_join_metadata_by_uri(noisyart_root):
    test = read_noisyart(noisyart_root, "test_200")
    assert len(test) == 12 and len(test.present_classes()) == 4
    keys = {test.key_of(i) for i in range(len(test))}
    assert keys == {artwork_uri(c) for c in ("Red", "Green", "Blue", "Yellow")}
    red = next(cls for cls in test.classes if cls.key == artwork_uri("Red"))
    assert (red.title, red.artist) == ("The Red Disc", "Master of Red")
    assert "red disc" in red.description
    # test folders are numbered differently from trainval ones: classes still line up by URI
    trainval = read_noisyart(noisyart_root, "trainval_3120")
    assert {trainval.key_of(i) for i in range(len(trainval))} >= keys
    purple = next(cls for cls in trainval.classes if cls.key == artwork_uri("Purple"))
    # no metadata entry: the title comes from the URI
    assert purple.title == "The Purple Disc" and purple.description == ""
    # the metadata-only class stays a zero-shot candidate for --candidates all
    assert len(test.classes) >= 5


def test_list_splits_match_files_ignoring_extension(noisyart_root):
    train = read_noisyart(noisyart_root, "train")
    val = read_noisyart(noisyart_root, "val")
    boot = read_noisyart(noisyart_root, "boot")
    trainval = read_noisyart(noisyart_root, "trainval")
    assert (len(train), len(val), len(boot), len(trainval)) == (15, 5, 5, 20)
    assert all(path.suffix == ".png" for path in train.paths)
    assert {p.stem for p in val.paths} == {"flickr_000000"}
    assert any("1 of 16 files" in note for note in train.notes)


def test_metadata_keyed_by_uri_is_accepted(tmp_path):
    root = make_noisyart(tmp_path / "na", metadata_as_dict=True)
    test = read_noisyart(root, "test_200")
    assert {cls.title for cls in test.classes} >= {"The Red Disc", "Lost Work"}


def test_reader_errors_are_actionable(tmp_path, noisyart_root):
    with pytest.raises(BadInput, match="unknown NoisyArt split"):
        read_noisyart(noisyart_root, "test_3120")
    with pytest.raises(NotFound, match="metadata.json"):
        read_noisyart(tmp_path, "test_200")
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        read_noisyart(tmp_path, "test_200")


def test_class_folders_with_csv(tmp_path):
    for split, count in (("train", 2), ("test", 2)):
        for colour in ("Red", "Blue"):
            folder = tmp_path / split / colour.lower()
            folder.mkdir(parents=True)
            for variant in range(count):
                draw(colour, variant).save(folder / f"{variant}.jpg")
    (tmp_path / "classes.csv").write_text(
        "class,title,artist,description\nred,Red Sun,Ann,a red disc\n"
    )
    test = read_class_folders(tmp_path, "test")
    by_key = {cls.key: cls for cls in test.classes}
    assert (by_key["red"].title, by_key["red"].artist, by_key["red"].description) == (
        "Red Sun",
        "Ann",
        "a red disc",
    )
    assert by_key["blue"].title == "blue" and len(test) == 4
    with pytest.raises(NotFound):
        read_class_folders(tmp_path, "val")


def test_title_prompt_drops_unknown_artist():
    assert title_prompt(ArtClass("k", "Mona Lisa", artist="Leonardo")) == "Mona Lisa, by Leonardo"
    assert title_prompt(ArtClass("k", "Mona Lisa")) == "Mona Lisa"
    assert (
        title_prompt(ArtClass("k", "Mona Lisa"), "a painting of {title} by {artist}")
        == "a painting of Mona Lisa"
    )


# --------------------------------------------------------------------------- metrics


def test_average_precision_matches_hand_computed_rankings():
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.4, 0.3, 0.2], [0.5, 0.5, 0.5, 0.5]])
    relevant = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    aps = average_precisions(scores, relevant)
    # row 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / 2; row 1: the only hit ranks 4th -> 1/4
    assert aps[0] == pytest.approx((1 + 2 / 3) / 2) and aps[1] == pytest.approx(0.25)
    assert np.isnan(aps[2])  # no relevant item: not counted
    excluded = np.zeros_like(relevant)
    excluded[1, 1] = True  # drop the top item of row 1: the hit moves to rank 3
    assert average_precisions(scores, relevant, excluded)[1] == pytest.approx(1 / 3)


def test_image_to_image_map_excludes_the_query():
    # 1-D "features" on a line: a, b (class 0) and c, d (class 1); e (class 2) has no partner
    features = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    labels = [0, 0, 1, 1, 2]
    # a ranks b(0.8) d(0.6) c(0) e(-1): AP 1;   b ranks d(0.96) a(0.8): AP 1/2
    # c ranks d(0.8) b(0.6): AP 1;              d ranks b(0.96) c(0.8): AP 1/2;  e: skipped
    expected = (1 + 0.5 + 1 + 0.5) / 4
    assert mean_average_precision(
        features, labels, features, labels, exclude_self=True
    ) == pytest.approx(expected)
    assert mean_average_precision(
        features, labels, features, labels, exclude_self=True, chunk=2
    ) == pytest.approx(expected)


def test_topk_accuracy_and_unpredictable_targets():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
    accuracy = topk_accuracy(scores, [0, 0, -1], ks=(1, 2, 3))
    assert accuracy == {1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3), 3: pytest.approx(2 / 3)}


def test_linear_probe_learns_separable_classes_and_misses_unseen_ones():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4
    train = np.concatenate([centres[c] + rng.normal(size=(10, 8)) * 0.3 for c in range(3)])
    train_keys = [k for k in "abc" for _ in range(10)]
    test = np.concatenate([centres[[0, 1, 2]] + rng.normal(size=(3, 8)) * 0.3, centres[[0]]])
    accuracy = linear_probe_accuracy(train, train_keys, test, ["a", "b", "c", "z"])
    assert accuracy[1] == pytest.approx(0.75)  # the unseen class 'z' is always wrong


def test_distinct_class_batches_never_repeat_a_class():
    labels = [0] * 6 + [1] * 3 + [2] * 3 + [3] * 2
    sampler = DistinctClassBatches(labels, batch_size=3)
    torch.manual_seed(1)
    first = list(sampler)
    torch.manual_seed(1)
    assert list(sampler) == first  # reproducible under the loop's per-epoch seed
    assert first and all(len({labels[i] for i in batch}) == len(batch) == 3 for batch in first)
    assert len(first) <= len(sampler)
    with pytest.raises(BadInput):
        DistinctClassBatches([5, 5, 5], batch_size=4)


# --------------------------------------------------------------------------- evaluation


def test_every_task_is_perfect_for_features_that_see_the_class(noisyart_root):
    test = read_noisyart(noisyart_root, "test_200")
    train = read_noisyart(noisyart_root, "trainval_200")
    run = evaluate(ColourOracle(), test, train, EvalOptions(progress=False))
    assert set(run["metrics"]) == set(art_eval.METRIC_LABELS)
    assert all(value == pytest.approx(1.0) for value in run["metrics"].values()), run["metrics"]
    assert run["counts"] == {"images": 12, "classes": 4, "train_images": 12, "train_classes": 4}


def test_clip_evaluation_on_the_fixture(noisyart_root, micro_backbone):
    test = read_noisyart(noisyart_root, "test_200")
    model = art_eval.ClipFeatures(micro_backbone)
    run = evaluate(model, test, read_noisyart(noisyart_root, "train"), EvalOptions(progress=False))
    metrics = run["metrics"]
    assert set(metrics) == set(art_eval.METRIC_LABELS)
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert metrics["zs_title_top5"] == 1.0  # only 4 candidate classes
    everything = evaluate(model, test, None, EvalOptions(candidates="all", progress=False))[
        "metrics"
    ]
    assert "probe_top1" not in everything
    # more candidates can only make zero-shot harder
    assert everything["zs_both_top1"] <= metrics["zs_both_top1"] + 1e-9
    assert everything["map_image"] == pytest.approx(metrics["map_image"])


def test_unreadable_images_are_skipped_and_reported(tmp_path, micro_backbone):
    root = make_noisyart(tmp_path / "na")
    broken = next((root / "test_200").iterdir()) / "broken.jpg"
    broken.write_bytes(b"not an image")
    run = evaluate(
        art_eval.ClipFeatures(micro_backbone),
        read_noisyart(root, "test_200"),
        None,
        EvalOptions(progress=False),
    )
    assert run["counts"]["images"] == 12
    assert any("1 unreadable" in note for note in run["notes"])


def test_resnet50_baseline_is_image_only(noisyart_root):
    model = art_eval.load_feature_model("resnet50:random", device="cpu")
    test = read_noisyart(noisyart_root, "test_200")
    run = evaluate(
        model, test, read_noisyart(noisyart_root, "trainval_200"), EvalOptions(progress=False)
    )
    assert set(run["metrics"]) == {"map_image", "probe_top1", "probe_top5"}
    assert 0.0 < run["metrics"]["map_image"] <= 1.0
    table = art_eval.markdown_results([run])
    assert "artwork->artwork mAP" in table and "ZS" not in table


def test_resnet50_without_local_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache; nothing is downloaded
    with pytest.raises(NotFound, match="IMAGENET1K_V2"):
        art_eval.load_feature_model("resnet50", device="cpu")


def test_eval_command_writes_json_and_markdown(noisyart_root, micro_model_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = main(
        [
            "eval",
            "noisyart",
            "--root",
            str(noisyart_root),
            "--model",
            str(micro_model_dir),
            "--model",
            "resnet50:random",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["split"] == "test_200" and report["train_split"] == "trainval_200"
    assert [run["model"] for run in report["runs"]] == [str(micro_model_dir), "resnet50:random"]
    markdown = out.with_suffix(".md").read_text()
    assert markdown.count("\n| ") == 3 and "descr.->artwork mAP" in markdown
    assert "| resnet50:random | - |" in markdown
    assert "artwork->artwork mAP" in capsys.readouterr().out


def test_eval_classfolders_command(tmp_path, micro_model_dir):
    for split in ("train", "test"):
        for colour in ("Red", "Blue", "Green"):
            folder = tmp_path / "museum" / split / colour.lower()
            folder.mkdir(parents=True)
            for variant in range(2):
                draw(colour, variant).save(folder / f"{variant}.png")
    code = main(
        [
            "eval",
            "classfolders",
            "--root",
            str(tmp_path / "museum"),
            "--model",
            str(micro_model_dir),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert code == 0 and (report["split"], report["train_split"]) == ("test", "train")
    assert (
        report["runs"][0]["counts"]["classes"] == 3 and "probe_top1" in report["runs"][0]["metrics"]
    )


# --------------------------------------------------------------------------- fine-tuning


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "open_clip_model.safetensors"))


def test_finetune_command_trains_saves_and_resumes(noisyart_root, micro_model_dir, tmp_path):
    out = tmp_path / "run"
    base = [
        "finetune",
        "noisyart",
        "--root",
        str(noisyart_root),
        "--model",
        str(micro_model_dir),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "0",
        "--device",
        "cpu",
        "--last-blocks",
        "1",
    ]
    assert main(base + ["--steps", "3"]) == 0
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["train_classes"] == 5 and summary["best_step"] == 3
    assert set(summary["best_metrics"]) == {"map_image", "map_description", "map_mean"}
    before, after = _weights(micro_model_dir), _weights(out / "model")
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert "visual.transformer.resblocks.1.mlp.c_fc.weight" in changed
    assert "transformer.resblocks.1.attn.in_proj_weight" in changed
    # --last-blocks 1: the first blocks stay as they were
    assert not any(".resblocks.0." in key for key in changed)
    assert main(base + ["--steps", "5", "--resume", str(out / "last")]) == 0
    state = json.loads((out / "last" / "train_state.json").read_text())
    assert state["step"] == 5 and [row["step"] for row in state["history"]] == [3, 5]
    assert (
        main(
            [
                "eval",
                "noisyart",
                "--root",
                str(noisyart_root),
                "--model",
                str(out / "model"),
                "--train-split",
                "none",
                "--device",
                "cpu",
            ]
        )
        == 0
    )


def test_finetune_rejects_unknown_text_kinds(noisyart_root, micro_model_dir, tmp_path, capsys):
    code = main(
        [
            "finetune",
            "noisyart",
            "--root",
            str(noisyart_root),
            "--model",
            str(micro_model_dir),
            "--out",
            str(tmp_path / "run"),
            "--texts",
            "caption",
            "--steps",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert code == 1 and "texts must be among" in capsys.readouterr().err
