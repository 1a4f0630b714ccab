"""Stage-1 triplets inside CLIP pretraining: the requests, their indices, and the loss."""

import math

import torch

from retrieval.backbone import new_model
from retrieval.shapes.torch_data import ShapesPairs
from retrieval.train.clip import clip_step, edit_loss, encode_used_tokens


def test_each_group_carries_the_requests_from_its_scene_to_its_variants():
    _, transform, tokenizer = new_model("ShapesCLIP-Micro", device="cpu")
    dataset = ShapesPairs(8, transform, tokenizer, seed=1, group=4, edits=True)
    samples = [dataset[index] for index in range(4)]
    for sample in samples:
        captions, requests = sample.captions, sample.requests
        assert [at for at, _ in requests] == [1, 2, 3]  # every variant is one edit of the scene
        assert all(text and text not in captions for _, text in requests)
    pixels, tokens, (request_tokens, references, targets), positives = dataset.collate(samples)
    assert positives is None  # every caption complete: each text belongs to its own image
    assert pixels.shape[0] == tokens.shape[0] == 16
    assert references.tolist() == [0] * 3 + [4] * 3 + [8] * 3 + [12] * 3
    assert targets.tolist() == [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15]
    assert request_tokens.shape[0] == 12
    plain = ShapesPairs(8, transform, tokenizer, seed=1, group=4)
    assert plain[0].requests == [] and plain.collate([plain[0]])[2:] == (None, None)


def test_the_reference_cannot_answer_its_own_query():
    images = torch.eye(3)
    request = torch.tensor([[0.0, 1.0, 0.0]])  # "make it like image 1", from image 0
    loss = edit_loss(images, request, torch.tensor([0]), torch.tensor([1]), logit_scale=10.0)
    # unmasked, the reference ties with the target (both at cosine 0.71): loss would be >= ln 2
    assert loss < 0.1 < math.log(2)
    wrong = edit_loss(images, request, torch.tensor([0]), torch.tensor([2]), logit_scale=10.0)
    assert wrong > 5


def test_the_step_adds_the_weighted_edit_loss():
    torch.manual_seed(0)
    model, transform, tokenizer = new_model("ShapesCLIP-Micro", device="cpu")
    dataset = ShapesPairs(4, transform, tokenizer, seed=2, group=4, edits=True)
    batch = dataset.collate([dataset[0], dataset[1]])
    model.eval()
    with torch.no_grad():
        alone = clip_step(model, batch)
        both = clip_step(model, batch, edit_weight=1.0)
        double = clip_step(model, batch, edit_weight=2.0)
    assert both > alone
    assert torch.isclose(double - alone, 2 * (both - alone), rtol=1e-4)


def test_the_trimmed_text_pass_gives_open_clips_features():
    torch.manual_seed(0)
    model, _, tokenizer = new_model("ShapesCLIP-Small", device="cpu")
    texts = ["a red circle", "ein großes rotes Quadrat links und ein kleiner grüner Stern oben"]
    tokens = tokenizer(texts * 3)
    assert (tokens != 0).sum(dim=1).max() < tokens.shape[1]  # there is padding to skip
    with torch.no_grad():
        assert torch.allclose(
            encode_used_tokens(model.eval(), tokens), model.encode_text(tokens), atol=1e-5
        )
