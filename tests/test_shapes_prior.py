"""The built-in shapes prior: the shipped folder, its loading through the prior interface, the vocabulary
error, the tokenizer, the rendered dataset and the judge."""

from __future__ import annotations

import json

import pytest
import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.factory import load_prior
from fsd_gs.prior.shapes import ShapesPrior, load_shapes_prior, shapes_prior_folder, vocabulary_error
from fsd_gs.shapes.captions import VOCABULARY
from fsd_gs.shapes.dataset import DatasetConfig, ShapesDataset
from fsd_gs.shapes.model import MAX_TOKENS, build_networks, folder_size, load_tokenizer, save_pipeline, save_tokenizer
from tests.contract import load_script

SHIPPED = shapes_prior_folder()


@pytest.fixture(scope="module")
def prior() -> ShapesPrior:
    return load_prior("shapes", device="cpu")


def test_shipped_folder_is_complete_and_small():
    for path in (
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "scheduler/scheduler_config.json",
        "judge/model.safetensors",
        "judge/config.json",
        "shapes.json",
    ):
        assert (SHIPPED / path).is_file(), path
    assert folder_size(SHIPPED) <= 30 * 2**20
    meta = json.loads((SHIPPED / "shapes.json").read_text())
    assert meta["vocabulary"] == list(VOCABULARY) and meta["training"]["step"] > 0


def test_shipped_prior_loads_through_the_prior_interface(prior):
    assert isinstance(prior, ShapesPrior)
    assert (prior.space, prior.channels, prior.downsample, prior.resolution) == ("pixel", 3, 1, 64)
    assert prior.alphas_cumprod.shape == (1000,) and prior.dtype == torch.float32
    emb = prior.encode_prompts("a red mushroom")
    _conditioning = emb.select(["front", "back"])
    cond, uncond = _conditioning.cond, _conditioning.uncond
    assert cond.shape == (2, MAX_TOKENS, 128) and not torch.allclose(cond[0], cond[1])
    z = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    eps = prior.predict_noise(z, torch.tensor([500, 500]), cond, uncond, 7.5)
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    # A trained model predicts the noise of a noised render much better than chance.
    images = torch.ones(1, 3, 64, 64)
    x0 = prior.encode_images(images)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    a, s = prior.alpha_sigma(torch.tensor([300]))
    pred = prior.predict_noise(a * x0 + s * noise, torch.tensor([300]), cond[:1], uncond, 1.0)
    assert ((pred - noise) ** 2).mean() < 0.5


def test_the_same_folder_loads_as_a_plain_pixel_pipeline():
    generic = load_prior(str(SHIPPED), device="cpu")
    assert type(generic).__name__ == "PixelDiffusionPrior" and generic.resolution == 64


def test_vocabulary_error_is_one_sentence(prior):
    with pytest.raises(UserError) as info:
        prior.encode_prompts("a photo of a red dragon")
    message = str(info.value)
    assert "'photo'" in message and "'dragon'" in message and "Stable Diffusion" in message and "mushroom" in message
    assert "\n" not in message and message.count(". ") == 0
    assert vocabulary_error("A Red Mushroom, overhead view") is None
    with pytest.raises(UserError):
        prior.encode_prompts("a red mushroom", negative_prompt="blurry")


def test_tokenizer_spells_every_word_as_one_token(tmp_path):
    save_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    for word in VOCABULARY:
        assert len(tok(word).input_ids) == 3, word  # BOS, the word, EOS
    ids = tok("an orange mushroom, overhead view").input_ids
    assert len(ids) == 8 <= MAX_TOKENS


def test_a_fresh_folder_round_trips(tmp_path):
    token_ids = save_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    unet, text_encoder = build_networks(token_ids)
    folder = save_pipeline(tmp_path / "prior", unet, text_encoder, summary={"step": 1})
    loaded = load_shapes_prior("cpu", folder=folder)
    z = torch.randn(1, 3, 64, 64)
    t = torch.tensor([10])
    emb = torch.randn(1, MAX_TOKENS, 128)
    with torch.no_grad():
        ref = unet(z, t, encoder_hidden_states=emb).sample
    got = loaded.unet(z, t, encoder_hidden_states=emb).sample
    assert torch.allclose(ref, got, atol=5e-2)  # fp16 storage


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="missing"):
        load_shapes_prior("cpu", folder=tmp_path)


def test_dataset_is_deterministic_and_labelled():
    data = ShapesDataset(DatasetConfig(views_per_object=2))
    a = data.sample(2, torch.Generator().manual_seed(3))
    b = data.sample(2, torch.Generator().manual_seed(3))
    assert a.images.shape == (4, 3, 64, 64) and a.images.min() >= 0 and a.images.max() <= 1
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert a.kind.shape == a.colour.shape == a.view.shape == (4,)
    assert (a.images < 0.95).float().mean() > 0.02  # something is drawn


def test_judge_reads_fresh_renders():
    from fsd_gs.shapes.evaluate import judge_accuracy
    from fsd_gs.shapes.judge import load_judge

    acc = judge_accuracy(load_judge(), n_objects=6, seed=4242, views_per_object=2)
    assert acc["kind"] >= 0.75 and acc["colour"] >= 0.75


def test_turntable_agreement_of_a_true_object():
    from fsd_gs.shapes.evaluate import turntable_agreement
    from fsd_gs.shapes.judge import load_judge
    from fsd_gs.shapes.world import make_object

    obj = make_object("mushroom", "red", torch.Generator().manual_seed(11))
    res = turntable_agreement(obj.gaussians, "a red mushroom", load_judge(), n_views=8)
    assert res["both"] >= 0.75 and res["n_views"] == 8
    wrong = turntable_agreement(obj.gaussians, "a blue car", load_judge(), n_views=8)
    assert wrong["both"] <= 0.25


def test_resumed_training_keeps_the_tokenizer_it_resumes_from(tmp_path, monkeypatch):
    """A resumed run must reuse the checkpoint's token ids: rebuilding the BPE tokenizer can renumber tokens,
    which silently re-wires the text encoder's learned embeddings."""
    import shutil

    mod = load_script("train_shapes_prior", monkeypatch)
    src = tmp_path / "prior"
    shutil.copytree(shapes_prior_folder(), src)
    vocab_file = src / "tokenizer" / "vocab.json"
    vocab = json.loads(vocab_file.read_text())
    vocab["cup</w>"], vocab["car</w>"] = vocab["car</w>"], vocab["cup</w>"]  # ids no rebuild would give
    vocab_file.write_text(json.dumps(vocab))
    out = tmp_path / "run"
    mod.main(["--out", str(out), "--resume", "--resume-from", str(src), "--tiny", "--steps", "1", "--device", "cpu"])
    assert json.loads((out / "tokenizer" / "vocab.json").read_text()) == vocab
    assert json.loads((out / "shapes_prior" / "tokenizer" / "vocab.json").read_text()) == vocab
