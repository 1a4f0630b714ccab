"""Multilingual open_clip models (Hugging Face text tower and tokenizer) through the real loader.

The real ones cannot be downloaded here, so a tiny random one is written in exactly their layout:
an open_clip model folder whose text_cfg names an XLM-RoBERTa text tower and a fast tokenizer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from retrieval.backbone import load_backbone, missing_packages, save_backbone
from retrieval.errors import BadInput, ModelUnavailable

XLM_SPEC = "xlm-roberta-base-ViT-B-32/laion5b_s13b_b90k"
SIGLIP_SPEC = "ViT-B-16-SigLIP-i18n-256/webli"
INSTALL = "pip install -r requirements-multilingual.txt"
EMBED_DIM = 24
CONTEXT = 16
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-RoBERTa's order: pad id 1
WORDS = [
    *["il", "gatto", "dorme", "nella", "città", "perché", "caffè", "già", "più"],
    *["le", "chat", "élève", "hôtel", "à", "château", "forêt", "noël"],
    *["der", "hund", "das", "mädchen", "über", "straße", "schön", "grün"],
    *["el", "niño", "mañana", "canción", "corazón", "señora", "árbol"],
]
VOCAB = {word: index for index, word in enumerate(SPECIALS + WORDS)}
TEXTS = [
    "il gatto dorme nella città",
    "das Mädchen über der Straße",
    "l'élève à l'hôtel",
    "el niño canta una canción",
]


def fabricated_tokenizer(folder: Path):
    """A word-level fast tokenizer over accented words, saved the way transformers saves one."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", VOCAB["<s>"]), ("</s>", VOCAB["</s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def fabricated_text_tower(folder: Path) -> Path:
    """A random 2-layer, 32-wide XLM-RoBERTa saved with save_pretrained (config + safetensors)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config = XLMRobertaConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=CONTEXT + 8,  # RoBERTa positions start after the pad id
        pad_token_id=VOCAB["<pad>"],
        bos_token_id=VOCAB["<s>"],
        eos_token_id=VOCAB["</s>"],
    )
    XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def multilingual_cfg(text_tower: Path, tokenizer_dir: Path) -> dict:
    """xlm-roberta-base-ViT-B-32's config, shrunk: same keys, tiny sizes, local names."""
    real = open_clip.get_model_config("xlm-roberta-base-ViT-B-32")
    text_cfg = {
        **real["text_cfg"],
        "hf_model_name": str(text_tower),
        "hf_tokenizer_name": str(tokenizer_dir),
        "context_length": CONTEXT,
    }
    vision_cfg = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
    return {"embed_dim": EMBED_DIM, "vision_cfg": vision_cfg, "text_cfg": text_cfg}


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory):
    """(model folder, the in-memory model it was saved from)."""
    root = tmp_path_factory.mktemp("multilingual")
    torch.manual_seed(0)
    tokenizer = fabricated_tokenizer(root / "tokenizer")
    cfg = multilingual_cfg(fabricated_text_tower(root / "xlm-roberta-tiny"), root / "tokenizer")
    model = open_clip.CustomTextCLIP(**cfg).eval()
    folder = save_backbone(model, cfg, root / "model", tokenizer=tokenizer)
    return folder, model


@pytest.fixture(scope="module")
def backbone(fabricated):
    return load_backbone(str(fabricated[0]), device="cpu")


def fresh_copy(folder: Path, tmp_path: Path) -> str:
    """Another path to the same files: the loader caches by path, so this one is built anew."""
    return str(shutil.copytree(folder, tmp_path / "copy"))


def test_the_real_multilingual_specs_are_known_to_open_clip():
    for spec in (XLM_SPEC, SIGLIP_SPEC):
        assert tuple(spec.split("/")) in open_clip.list_pretrained()


def test_accented_texts_encode_to_distinct_unit_vectors(backbone):
    assert backbone.model.text.transformer.config.model_type == "xlm-roberta"
    assert backbone.dim == EMBED_DIM
    vectors = backbone.encode_texts(TEXTS)
    assert vectors.shape == (len(TEXTS), EMBED_DIM)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    cosines = vectors @ vectors.T
    assert (cosines[~np.eye(len(TEXTS), dtype=bool)] < 0.9999).all()


def test_the_tokenizer_is_the_fabricated_one(backbone):
    tokens = backbone.tokenize(["Città gatto xyz"])[0].tolist()
    assert tokens[:5] == [
        VOCAB["<s>"],
        VOCAB["città"],
        VOCAB["gatto"],
        VOCAB["<unk>"],
        VOCAB["</s>"],
    ]
    assert tokens[5:] == [VOCAB["<pad>"]] * (CONTEXT - 5)
    decomposed = unicodedata.normalize("NFD", "straße mädchen")  # accents typed as two code points
    assert backbone.tokenize([decomposed])[0][1:3].tolist() == [VOCAB["straße"], VOCAB["mädchen"]]
    assert backbone.context_length == CONTEXT
    assert backbone.is_truncated("gatto " * CONTEXT) and not backbone.is_truncated("il gatto")


def test_images_encode_too(backbone):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]
    vectors = backbone.encode_images(images)
    assert vectors.shape == (2, EMBED_DIM)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])


def test_text_embeddings_are_the_saved_weights_on_every_load(fabricated, backbone, tmp_path):
    folder, model = fabricated
    again = load_backbone(fresh_copy(folder, tmp_path), device="cpu")
    assert again.model is not backbone.model
    assert np.allclose(again.encode_texts(TEXTS), backbone.encode_texts(TEXTS), atol=1e-6)
    with torch.no_grad():
        direct = model.encode_text(backbone.tokenize(TEXTS), normalize=True).numpy()
    assert np.allclose(backbone.encode_texts(TEXTS), direct, atol=1e-5)


def test_onnx_runtimes_are_refused_for_a_hugging_face_text_tower(fabricated, tmp_path):
    """Exported, the tower mishandles padding (cosine 0.89-0.96 to PyTorch): refused, not skewed."""
    for runtime in ("onnx", "onnx-int8"):
        with pytest.raises(BadInput, match="use runtime torch"):
            load_backbone(str(fabricated[0]), device="cpu", runtime=runtime, cache_dir=tmp_path)
    assert not (tmp_path / "onnx").exists()


def _must_not_build(*args, **kwargs):
    raise AssertionError("open_clip was asked to build a model it lacks the packages for")


def test_missing_transformers_is_named_before_open_clip_runs(fabricated, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    monkeypatch.setattr(open_clip, "create_model_and_transforms", _must_not_build)
    for spec in (XLM_SPEC, fresh_copy(fabricated[0], tmp_path)):
        with pytest.raises(ModelUnavailable) as caught:
            load_backbone(spec, device="cpu")
        message = str(caught.value)
        assert repr(spec) in message and "transformers" in message and INSTALL in message


def test_missing_packages_reads_the_config(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    siglip_i18n = open_clip.get_model_config("ViT-B-16-SigLIP-i18n-256")
    assert missing_packages(siglip_i18n) == ["transformers", "tokenizers"]
    text_tower_only = {"text_cfg": {"hf_model_name": "xlm-roberta-base"}}
    assert missing_packages(text_tower_only) == ["transformers"]
    assert missing_packages(open_clip.get_model_config("ViT-B-32")) == []
    monkeypatch.undo()
    assert missing_packages(open_clip.get_model_config("xlm-roberta-base-ViT-B-32")) == []


def test_plain_models_load_without_the_extra_packages(micro_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    plain = load_backbone(fresh_copy(micro_model_dir, tmp_path), device="cpu")
    assert plain.encode_texts(["a red circle"]).shape == (1, plain.dim)


def test_the_app_imports_without_the_extra_packages():
    """The default install has no transformers: the app must start and refuse such models clearly."""
    script = (
        "import sys\n"
        "for name in ('transformers', 'tokenizers', 'sentencepiece'): sys.modules[name] = None\n"
        "import retrieval.catalog, retrieval.backbone as b\n"
        "from retrieval.errors import BadInput, ModelUnavailable\n"
        f"try: b.load_backbone({XLM_SPEC!r}, device='cpu')\n"
        "except ModelUnavailable as error: print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "transformers, tokenizers" in done.stdout and INSTALL in done.stdout


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """Offline with nothing cached, whatever this machine's own Hugging Face cache holds."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert huggingface_hub.constants.HF_HUB_OFFLINE


@pytest.mark.usefixtures("empty_hf_cache")
def test_an_uncached_multilingual_model_offline_is_a_clear_error():
    with pytest.raises(ModelUnavailable) as caught:
        load_backbone(XLM_SPEC, device="cpu")
    message = str(caught.value)
    assert f"{XLM_SPEC!r} could not be loaded" in message and "download it once" in message
    assert "Hugging Face text config and tokenizer" in message and "\n" not in message


def _edit_folder(folder: Path, break_it: str) -> None:
    if break_it == "text tower":  # the folder names a hub text tower that is not cached
        config = json.loads((folder / "open_clip_config.json").read_text())
        config["model_cfg"]["text_cfg"]["hf_model_name"] = "FacebookAI/xlm-roberta-base"
        (folder / "open_clip_config.json").write_text(json.dumps(config))
    else:  # the tokenizer files were not copied with the weights
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()


@pytest.mark.usefixtures("empty_hf_cache")
@pytest.mark.parametrize("break_it", ["text tower", "tokenizer"])
def test_a_folder_missing_its_hugging_face_parts_is_a_clear_error(fabricated, tmp_path, break_it):
    folder = Path(fresh_copy(fabricated[0], tmp_path))
    _edit_folder(folder, break_it)
    with pytest.raises(ModelUnavailable, match="could not be loaded") as caught:
        load_backbone(str(folder), device="cpu")
    assert "\n" not in str(caught.value)
