"""The multi-view shapes prior (shapes-mv): the zero-initialised start equals the shipped shapes prior, its folder loads
through the MVDream class, the tiny training run (and its resume), the 4-view check, the presets, FSD end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fsd_gs.camera import orbit_cameras
from fsd_gs.errors import UserError
from fsd_gs.prior.mvdream import MultiViewPriorMixin, PixelMVDreamPrior, is_mvdream_folder, load_mvdream_prior
from fsd_gs.prior.mvdream_shapes import multiview_unet, save_shapes_mv
from fsd_gs.prior.shapes import ShapesMVPrior, ShapesPrior, load_shapes_mv_prior, load_shapes_prior, shapes_prior_folder
from fsd_gs.shapes.model import folder_size
from tests.contract import load_script, train_multiview


@pytest.fixture(scope="module")
def start_folder(tmp_path_factory) -> Path:
    """shapes-mv as it starts: the shipped UNet + a zero-output camera embedding, saved in the shipped layout."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from fsd_gs.shapes.judge import load_judge

    shipped = shapes_prior_folder()
    unet = UNet2DConditionModel.from_pretrained(shipped / "unet")
    text_encoder = CLIPTextModel.from_pretrained(shipped / "text_encoder")
    return save_shapes_mv(
        tmp_path_factory.mktemp("mv") / "shapes_mv",
        multiview_unet(unet),
        text_encoder,
        load_judge(),
        {"step": 0},
        tokenizer=shipped / "tokenizer",
    )


def _inputs(prior, batch: int, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 3, 64, 64, generator=gen)
    t = torch.randint(20, 980, (batch,), generator=gen)
    emb = prior.encode_prompts("a red chair")
    _conditioning = emb.select(["front", "side", "back", "side"][:batch] * (batch // 4 or 1))
    cond, uncond = _conditioning.cond, _conditioning.uncond
    cams = orbit_cameras(
        torch.tensor([0.0, 90.0, 180.0, 270.0]).repeat(batch // 4 or 1)[:batch],
        torch.full((batch,), 20.0),
        torch.full((batch,), 2.5),
        torch.full((batch,), 50.0),
        64,
        64,
    )
    return z, t, cond, uncond, cams


def test_the_zero_camera_start_in_groups_of_one_view_is_the_shipped_prior(start_folder):
    shapes = load_shapes_prior("cpu")
    one = load_shapes_mv_prior("cpu", folder=start_folder, views_per_group=1)
    four = load_shapes_mv_prior("cpu", folder=start_folder)
    assert isinstance(one, ShapesMVPrior) and isinstance(one, MultiViewPriorMixin) and isinstance(one, ShapesPrior)
    assert one.camera_conditioned and one.views_per_group == 1 and one.judge_folder == start_folder / "judge"
    z, t, cond, uncond, cams = _inputs(shapes, 4)
    ref = shapes.predict_noise(z, t, cond, uncond, 2.5)
    out = one.predict_noise(z, t, cond, uncond, 2.5, cameras=cams)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    other = orbit_cameras(
        torch.tensor([33.0, 10.0, -70.0, 150.0]), torch.full((4,), 60.0), torch.full((4,), 2.5), torch.full((4,), 50.0), 64, 64
    )
    torch.testing.assert_close(one.predict_noise(z, t, cond, uncond, 2.5, cameras=other), ref, rtol=0, atol=1e-5)
    grouped = four.predict_noise(z, t, cond, uncond, 2.5, cameras=cams)  # the views now attend to each other
    assert (grouped - ref).abs().max() > 1e-3
    assert float(four.unet.class_embedding.linear_2.weight.abs().max()) == 0.0


def test_the_folder_loads_through_the_mvdream_class_and_the_factory(start_folder):
    from fsd_gs.prior.factory import load_prior

    assert is_mvdream_folder(start_folder)
    assert not is_mvdream_folder(shapes_prior_folder())
    prior = load_mvdream_prior(start_folder, "cpu", torch.float32)
    assert type(prior) is PixelMVDreamPrior and prior.spec is None and prior.views_per_group == 4
    assert (prior.space, prior.channels, prior.resolution) == ("pixel", 3, 64)
    assert type(load_prior(str(start_folder), device="cpu")) is PixelMVDreamPrior
    assert folder_size(start_folder) <= 30 * 2**20
    with pytest.raises(UserError, match="does not know 'dragon'"):
        load_shapes_mv_prior("cpu", folder=start_folder).encode_prompts("a purple dragon")
    with pytest.raises(UserError, match="multiple of 4"):
        z, t, cond, uncond, _ = _inputs(prior, 4)
        prior.predict_noise(z[:3], t[:3], cond[:3], uncond[:3], 2.5)
    with pytest.raises(UserError, match="multi-view shapes prior is missing"):
        load_shapes_mv_prior("cpu", folder=shapes_prior_folder())  # a text-to-image folder is not shapes-mv


def test_a_text_to_image_unet_is_not_a_multiview_one(tmp_path, start_folder):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(start_folder, bad)
    shutil.rmtree(bad / "unet")
    shutil.copytree(shapes_prior_folder() / "unet", bad / "unet")
    with pytest.raises(UserError, match="no 16-d camera embedding"):
        load_mvdream_prior(bad, "cpu", torch.float32)


def test_tiny_training_run_is_finite_and_resumes(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    mod = load_script("train_shapes_mv", monkeypatch)
    out = tmp_path / "run"
    assert mod.main(["--out", str(out), "--tiny", "--steps", "2", "--device", "cpu"]) == 0
    folder = out / "shapes_mv"
    meta = json.loads((folder / "shapes.json").read_text())["training"]
    assert (meta["step"], meta["segments"], meta["multiview"]) == (2, 1, True)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) and r["loss"] > 0 for r in rows)
    weights = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert weights["class_embedding.linear_2.weight"].dtype == torch.float16
    assert float(weights["class_embedding.linear_2.weight"].float().abs().max()) > 0  # the camera is being learned
    assert type(load_mvdream_prior(folder, "cpu", torch.float32)) is PixelMVDreamPrior
    assert mod.main(["--out", str(out), "--tiny", "--steps", "3", "--device", "cpu", "--resume"]) == 0
    assert "resumed at step 2 (segment 1)" in capsys.readouterr().out
    meta = json.loads((folder / "shapes.json").read_text())["training"]
    assert (meta["step"], meta["segments"]) == (3, 2)
    assert len((out / "log.jsonl").read_text().splitlines()) == 3


def test_grouped_training_cameras_are_90_degrees_apart_at_one_elevation(monkeypatch):
    from fsd_gs.shapes.dataset import DatasetConfig

    mod = load_script("train_shapes_mv", monkeypatch)
    data = mod.GroupedShapesDataset(DatasetConfig(views_per_object=4), torch.device("cpu"), (0.0, 30.0))
    cams = data.cameras(3, torch.Generator().manual_seed(0))
    az, el = cams.azimuth.reshape(3, 4), cams.elevation.reshape(3, 4)
    steps = torch.remainder(az[:, 1:] - az[:, :-1], 360.0)
    torch.testing.assert_close(steps, torch.full_like(steps, 90.0), atol=1e-3, rtol=0)
    assert (el == el[:, :1]).all() and (el >= 0).all() and (el <= 30).all()
    labels = mod.camera_labels(cams.azimuth, cams.elevation, torch.device("cpu"))
    from fsd_gs.prior.mvdream_cameras import mvdream_camera_vectors

    torch.testing.assert_close(labels, mvdream_camera_vectors(cams), atol=1e-5, rtol=0)  # distance/fov do not matter


class _FixedViews:
    """A judge that reads every group as front, side, front, side (a Janus group) and every kind as chair."""

    def predict(self, images):
        from fsd_gs.camera import VIEW_NAMES
        from fsd_gs.shapes.world import KINDS

        n = images.shape[0]
        views = torch.tensor([VIEW_NAMES.index(v) for v in ("front", "side", "front", "side")]).repeat(n // 4)
        return {"kind": torch.full((n,), KINDS.index("chair")), "colour": torch.zeros(n, dtype=torch.long), "view": views}


def test_four_view_check_samples_groups_and_scores_them(start_folder, tmp_path):
    from PIL import Image

    from fsd_gs.prior.mvdream_check import four_view_check, save_sample_grid
    from fsd_gs.shapes.judge import load_judge

    prior = load_shapes_mv_prior("cpu", folder=start_folder)
    res = four_view_check(prior, _FixedViews(), kinds=("chair", "car"), groups_per_kind=1, steps=2)
    assert res.images.shape == (8, 3, 64, 64) and 0 <= float(res.images.min()) <= float(res.images.max()) <= 1
    assert res.per_kind["chair"] == {"view_accuracy": 0.75, "janus": 1.0, "kind_accuracy": 1.0, "consistent": 0.0}
    assert res.per_kind["car"]["kind_accuracy"] == 0.0 and (res.janus, res.kind_accuracy) == (1.0, 0.5)
    assert prior.default_elevation == 15.0  # restored after sampling at the check's elevation
    real = four_view_check(prior, load_judge(), kinds=("chair",), groups_per_kind=1, steps=2, view_prompts=True)
    assert len(real.read_views) == 4 and 0.0 <= real.view_accuracy <= 1.0
    path = save_sample_grid(res.images, tmp_path / "grid.png")
    assert Image.open(path).size == (4 * 64, 2 * 64)


def test_mv_presets_differ_from_the_shapes_pair_only_in_model_and_camera_batch():
    from fsd_gs.train import parse_config
    from tests.test_config import differing

    for method, base in (("fsd", "shapes-fsd-plain"), ("sds", "shapes-sds")):  # shapes-fsd = shapes-fsd-plain + Perp-Neg
        diff = differing(base, f"shapes-{method}-mv")
        assert diff - {"config"} == {"model", "camera.batch_size"}
        cfg = parse_config(["--model", "shapes-mv", "--method", method, "--prompt", "a red chair"])
        assert (cfg.model, cfg.camera.batch_size, cfg.steps) == ("shapes-mv", 4, 600)
        cfg.validate()


@pytest.mark.parametrize("preset", ["shapes-fsd-mv", "shapes-sds-mv"])
def test_a_few_steps_end_to_end_with_a_shapes_mv_folder(preset, start_folder, tmp_path, capsys):
    train_multiview(preset, str(start_folder), "a red chair", 3, tmp_path, capsys, "--gaussians.num-points", "300", bad_batch=2)
