"""MVDream: key mapping of the original weights, the multi-view UNet, camera conversion, grouped cameras, loading.

Everything runs on tiny random-weight models except the full-size key check (shapes only, meta device) and the
CUDA test (full-size random MVDream in fp16, one guided prediction on 4 views at 256 px).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fsd_gs.camera import CameraConfig, OrbitSampler, orbit_cameras, turntable
from fsd_gs.errors import UserError
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.mvdream_cameras import (
    MultiViewOrbitSampler,
    mvdream_camera_vectors,
    orbit_sampler_for,
    reference_group,
)
from fsd_gs.prior.mvdream_random import TINY_MVDREAM_CONFIG, build_tiny_mvdream
from fsd_gs.prior.mvdream_unet import (
    MVDREAM_SD21_CONFIG,
    build_unet,
    convert_state_dict,
    diffusers_config,
    ldm_to_diffusers_names,
    ldm_unet_shapes,
    load_unet,
    parse_config,
)
from tests.contract import train_multiview

SD21 = parse_config(MVDREAM_SD21_CONFIG)
TINY = parse_config(TINY_MVDREAM_CONFIG)


def _expected(spec) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_unet(spec, device="meta").state_dict().items()}


# -- key mapping ----------------------------------------------------------------------------------
REAL_SD21_KEYS = {  # names and shapes of the original sd-v2.1-base-4view UNet, read off its module tree
    "time_embed.0.weight": (1280, 320),
    "camera_embed.0.weight": (1280, 16),
    "camera_embed.2.bias": (1280,),
    "input_blocks.0.0.weight": (320, 4, 3, 3),
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
    "input_blocks.3.0.op.weight": (320, 320, 3, 3),
    "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
    "input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
    "middle_block.1.proj_in.weight": (1280, 1280),
    "output_blocks.0.0.skip_connection.weight": (1280, 2560, 1, 1),
    "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
    "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
    "output_blocks.11.1.proj_out.weight": (320, 320),
    "out.2.weight": (4, 320, 3, 3),
}


def test_full_sd21_key_list_maps_without_allocating():
    shapes = ldm_unet_shapes(SD21)
    for name, shape in REAL_SD21_KEYS.items():
        assert shapes[name] == shape, name
    assert not any(k.startswith("label_emb") for k in shapes)
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    expected = _expected(SD21)
    converted = convert_state_dict(state, expected, SD21.num_res_blocks, "the test checkpoint")
    assert set(converted) == set(expected) and len(converted) == len(shapes) == 690  # SD 2.1's 686 + the camera MLP
    assert sum(math.prod(s) for s in expected.values()) == pytest.approx(867.57e6, rel=1e-4)
    table = ldm_to_diffusers_names(shapes, SD21.num_res_blocks)
    assert table["class_embedding.linear_1.weight"] == "camera_embed.0.weight"
    assert table["class_embedding.linear_2.bias"] == "camera_embed.2.bias"
    assert table["conv_in.weight"] == "input_blocks.0.0.weight"
    assert (
        table["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
        == "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    )
    assert table["up_blocks.0.upsamplers.0.conv.weight"] == "output_blocks.2.1.conv.weight"
    assert table["mid_block.attentions.0.proj_in.weight"] == "middle_block.1.proj_in.weight"
    assert table["time_embedding.linear_2.weight"] == "time_embed.2.weight"


def test_unknown_missing_or_misshapen_weights_are_one_user_error():
    shapes = ldm_unet_shapes(TINY)
    expected = _expected(TINY)
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with pytest.raises(UserError, match="does not have"):
        convert_state_dict({**state, "input_blocks.1.1.extra.weight": torch.empty(3)}, expected, 1, "ckpt")
    with pytest.raises(UserError, match="no camera embedding"):
        convert_state_dict({k: v for k, v in state.items() if not k.startswith("camera_embed")}, expected, 1, "ckpt")
    bad = dict(state)
    bad["out.2.weight"] = torch.empty(4, 32, 1, 1, device="meta")
    with pytest.raises(UserError, match="shape"):
        convert_state_dict(bad, expected, 1, "ckpt")


def test_config_errors():
    with pytest.raises(UserError, match="ImageDream"):
        parse_config({**MVDREAM_SD21_CONFIG, "ip_dim": 16})
    with pytest.raises(UserError, match="keys MVDream"):
        parse_config({**MVDREAM_SD21_CONFIG, "something_new": 1})
    with pytest.raises(UserError, match="lacks context_dim"):
        parse_config({k: v for k, v in MVDREAM_SD21_CONFIG.items() if k != "context_dim"})
    config = diffusers_config(SD21)
    assert config["class_embed_type"] == "projection" and config["projection_class_embeddings_input_dim"] == 16
    assert config["attention_head_dim"] == (5, 10, 20, 20) and config["down_block_types"][-1] == "DownBlock2D"


def test_tiny_random_ldm_state_dict_loads_into_the_right_places():
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) for k, s in ldm_unet_shapes(TINY).items()}
    unet = load_unet(TINY, state, torch.float32, "tiny")
    params = dict(unet.named_parameters())
    assert torch.equal(params["class_embedding.linear_1.weight"], state["camera_embed.0.weight"])
    assert torch.equal(params["conv_out.weight"], state["out.2.weight"])
    assert torch.equal(
        params["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"],
        state["input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"],
    )
    assert not any(p.requires_grad for p in params.values())


# -- the multi-view UNet --------------------------------------------------------------------------
def _inputs(batch: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 4, TINY.image_size, TINY.image_size, generator=gen)
    text = torch.randn(batch, 5, TINY.context_dim, generator=gen)
    cams = torch.randn(batch, 16, generator=gen)
    t = torch.tensor([10, 400, 700, 999, 3, 500, 250, 900][:batch])
    return z, t, text, cams


@torch.no_grad()
def test_one_view_without_camera_is_the_plain_sd_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    mv = build_unet(TINY, num_frames=1)
    torch.nn.init.zeros_(mv.class_embedding.linear_2.weight)
    torch.nn.init.zeros_(mv.class_embedding.linear_2.bias)
    plain_config = {k: v for k, v in diffusers_config(TINY).items() if "class_embed" not in k}
    plain = UNet2DConditionModel(**plain_config)
    plain.load_state_dict({k: v for k, v in mv.state_dict().items() if not k.startswith("class_embedding")})
    z, t, text, cams = _inputs(3)
    out_mv = mv(z, t, encoder_hidden_states=text, class_labels=cams).sample
    out_sd = plain(z, t, encoder_hidden_states=text).sample
    assert torch.equal(out_mv, out_sd)
    mv.class_embedding.linear_2.bias.fill_(0.1)  # the camera does reach the output once its MLP is not zero
    assert not torch.allclose(mv(z, t, encoder_hidden_states=text, class_labels=cams).sample, out_sd)


@torch.no_grad()
def test_views_of_a_group_attend_to_each_other_and_permute():
    torch.manual_seed(0)
    unet = build_unet(TINY, num_frames=4).eval()
    z, t, text, cams = _inputs(8)
    t = torch.full((8,), 500)

    def run(z_, text_=text, cams_=cams):
        return unet(z_, t, encoder_hidden_states=text_, class_labels=cams_).sample

    out = run(z)
    z2 = z.clone()
    z2[1] += 1.0  # change view 2 of the first group
    out2 = run(z2)
    assert (out2[0] - out[0]).abs().max() > 1e-4  # view 1 sees it
    assert torch.equal(out2[4:], out[4:])  # the other group does not
    perm = torch.tensor([2, 0, 3, 1, 5, 7, 4, 6])  # views permuted inside each group
    out_p = run(z[perm], text[perm], cams[perm])
    assert torch.allclose(out_p, out[perm], atol=1e-5, rtol=1e-4)

    from fsd_gs.prior.mvdream_unet import set_views_per_group

    set_views_per_group(unet, 1)  # control: one view per group, views are independent
    assert torch.equal(run(z2)[0], run(z)[0])
    set_views_per_group(unet, 4)
    with pytest.raises(UserError, match="multiple of 4"):
        unet(z[:6], t[:6], encoder_hidden_states=text[:6], class_labels=cams[:6])


# -- cameras --------------------------------------------------------------------------------------
def _reference_mvdream_camera(elevation: float, azimuth: float) -> np.ndarray:
    """MVDream's own formula: a y-up (OpenGL) look-at camera on the unit sphere, then its world turned to z-up."""
    e, a = np.radians(elevation), np.radians(azimuth)
    position = np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, -forward], axis=1)
    c2w[:3, 3] = position
    to_z_up = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    return (to_z_up @ c2w).reshape(16)


def test_camera_vectors_match_mvdream_formula():
    front = mvdream_camera_vectors(turntable(1, elevation=0.0, distance=2.5))[0]
    assert torch.allclose(front, torch.tensor([1, 0, 0, 0, 0, 0, -1, -1, 0, 1, 0, 0, 0, 0, 0, 1.0]), atol=1e-6)
    left = mvdream_camera_vectors(turntable(4, elevation=0.0, distance=1.7))[1]  # azimuth 90
    assert torch.allclose(left, torch.tensor([0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1.0]), atol=1e-6)
    az = torch.tensor([0.0, 37.0, 90.0, -120.0, 179.0, 250.0])
    el = torch.tensor([15.0, -10.0, 30.0, 45.0, 0.0, 60.0])
    dist = torch.tensor([2.5, 1.0, 3.2, 0.7, 2.5, 4.0])
    cams = orbit_cameras(az, el, dist, torch.full((6,), 40.0), 256, 256)
    ours = mvdream_camera_vectors(cams).double().numpy()
    ref = np.stack([_reference_mvdream_camera(e, a) for a, e in zip(az.tolist(), el.tolist())])
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_grouped_orbit_sampler():
    config = CameraConfig(batch_size=8, width=64, height=64, elevation_range=(0.0, 30.0))
    sampler = MultiViewOrbitSampler(config, views_per_group=4)
    cams = sampler.sample(torch.Generator().manual_seed(3))
    assert len(cams) == 8 and cams.width == 64
    for g in range(2):
        group = slice(4 * g, 4 * g + 4)
        for name in ("elevation", "distance", "fovy"):
            values = getattr(cams, name)[group]
            assert torch.allclose(values, values[0].expand(4)), name
        steps = torch.remainder(torch.diff(cams.azimuth[group]), 360.0)
        assert torch.allclose(steps, torch.full((3,), 90.0), atol=1e-4)
        assert 0.0 <= float(cams.elevation[4 * g]) <= 30.0
    assert not torch.allclose(cams.azimuth[0], cams.azimuth[4])  # groups start at different azimuths
    again = sampler.sample(torch.Generator().manual_seed(3))
    assert torch.equal(again.viewmats, cams.viewmats)
    assert torch.allclose(cams.camera_centers().norm(dim=-1), cams.distance, atol=1e-5)
    with pytest.raises(UserError, match="multiple of 4"):
        MultiViewOrbitSampler(replace(config, batch_size=6), views_per_group=4)
    with pytest.raises(UserError, match="multiple of 4"):
        sampler.sample(torch.Generator(), batch_size=3)

    class Single:
        pass

    class Multi:
        views_per_group = 4

    assert isinstance(orbit_sampler_for(Single(), config), OrbitSampler)
    assert isinstance(orbit_sampler_for(Multi(), config), MultiViewOrbitSampler)


# -- the prior ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_mvdream_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_mvdream(tmp_path_factory.mktemp("mvdream") / "tiny-mvdream", seed=0)


@pytest.fixture(scope="module")
def tiny_mvdream_prior(tiny_mvdream_dir: Path):
    from fsd_gs.prior.mvdream import load_mvdream_prior

    return load_mvdream_prior(tiny_mvdream_dir, "cpu", torch.float32)


def _views(prior, batch: int = 4):
    emb = prior.encode_prompts("a red chair", view_dependent=False)
    _conditioning = emb.select(["none"] * batch)
    cond, uncond = _conditioning.cond, _conditioning.uncond
    z = torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    return z, torch.full((batch,), 600), cond, uncond


def test_tiny_folder_loads_and_predicts_with_cameras(tiny_mvdream_dir, tiny_mvdream_prior):
    from fsd_gs.prior.mvdream import MVDreamPrior, is_mvdream_folder

    prior = tiny_mvdream_prior
    assert is_mvdream_folder(tiny_mvdream_dir)
    assert isinstance(prior, MVDreamPrior) and prior.camera_conditioned and prior.views_per_group == 4
    assert prior.resolution == 64 and prior.channels == 4 and prior.prediction_type == "epsilon"
    z, t, cond, uncond = _views(prior)
    cams = turntable(4, elevation=20.0, width=64, height=64)
    eps = prior.predict_noise(z, t, cond, uncond, 7.5, cameras=cams)
    assert eps.shape == z.shape and eps.dtype == torch.float32 and torch.isfinite(eps).all()
    other = prior.predict_noise(z, t, cond, uncond, 7.5, cameras=turntable(4, elevation=-20.0, width=64, height=64))
    assert not torch.allclose(eps, other)  # the camera matters
    reference = prior.predict_noise(z, t, cond, uncond, 7.5, cameras=reference_group(4, 1))
    assert torch.equal(prior.predict_noise(z, t, cond, uncond, 7.5), reference)  # None = MVDream's reference views
    eps_c = prior.predict_noise(z, t, cond, uncond, 1.0, cameras=cams)
    eps_u = prior.predict_noise(z, t, uncond.expand_as(cond), uncond, 1.0, cameras=cams)
    assert torch.allclose(eps, eps_u + 7.5 * (eps_c - eps_u), atol=1e-4)
    with pytest.raises(UserError, match="groups of 4"):
        prior.predict_noise(torch.cat([z, z[:2]]), torch.full((6,), 600), cond[:1], uncond, 7.5)


def test_distill_loss_passes_the_cameras(tiny_mvdream_prior):
    from fsd_gs.distill import distill_loss

    prior = tiny_mvdream_prior
    images = torch.full((4, 3, 64, 64), 0.5, requires_grad=True)
    _, t, cond, uncond = _views(prior)
    eps = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    cams = MultiViewOrbitSampler(CameraConfig(batch_size=4, width=64, height=64)).sample(torch.Generator().manual_seed(0))
    out = distill_loss(prior, images, eps, t, Conditioning(cond, uncond), 7.5, cameras=cams, return_predictions=True)
    out.loss.backward()
    assert torch.isfinite(out.loss) and images.grad.abs().sum() > 0
    alpha, sigma = (x.view(-1, 1, 1, 1) for x in prior.alpha_sigma(t))
    z_t = alpha * prior.encode_images(images.detach()) + sigma * eps
    direct = prior.predict_noise(z_t, t, cond, uncond, 7.5, cameras=cams)
    assert torch.allclose(out.aux["eps_hat"], direct, atol=1e-5)  # the loss used these cameras
    assert not torch.allclose(out.aux["eps_hat"], prior.predict_noise(z_t, t, cond, uncond, 7.5), atol=1e-4)


def test_single_file_checkpoints(tiny_mvdream_dir, tiny_mvdream_prior, tmp_path):
    from safetensors.torch import load_file, save_file

    from fsd_gs.prior.mvdream import load_mvdream_prior

    unet = load_file(str(tiny_mvdream_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    whole = {f"model.diffusion_model.{k}": v for k, v in unet.items()}
    whole["first_stage_model.encoder.conv_in.weight"] = torch.zeros(2, 3)  # other parts of the checkpoint are skipped
    z, t, cond, uncond = _views(tiny_mvdream_prior)
    want = tiny_mvdream_prior.predict_noise(z, t, cond, uncond, 7.5)
    st, pt = tmp_path / "mv.safetensors", tmp_path / "mv.pt"
    save_file(whole, str(st))
    torch.save({"state_dict": whole}, pt)
    for path in (st, pt):
        prior = load_mvdream_prior(path, "cpu", torch.float32, base_model=str(tiny_mvdream_dir), unet_config=TINY_MVDREAM_CONFIG)
        assert torch.equal(prior.predict_noise(z, t, cond, uncond, 7.5), want), path.suffix
    torch.save({"state_dict": whole, "extra": Path("not a tensor")}, tmp_path / "pickled.pt")
    with pytest.raises(UserError, match="could not read"):
        load_mvdream_prior(
            tmp_path / "pickled.pt", "cpu", torch.float32, base_model=str(tiny_mvdream_dir), unet_config=TINY_MVDREAM_CONFIG
        )
    save_file({k: v for k, v in whole.items() if "camera_embed" not in k}, str(tmp_path / "sd.safetensors"))
    with pytest.raises(UserError, match="camera embedding"):
        load_mvdream_prior(
            tmp_path / "sd.safetensors", "cpu", torch.float32, base_model=str(tiny_mvdream_dir), unet_config=TINY_MVDREAM_CONFIG
        )
    with pytest.raises(UserError, match="does not exist"):
        load_mvdream_prior(tmp_path / "missing.pt", "cpu", torch.float32)


def test_a_plain_sd_folder_is_not_mvdream(tmp_path):
    import json

    from fsd_gs.prior.mvdream import is_mvdream_folder, load_mvdream_prior

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]})
    )
    assert not is_mvdream_folder(tmp_path) and not is_mvdream_folder(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not an MVDream pipeline"):
        load_mvdream_prior(tmp_path, "cpu", torch.float32)


# -- full size on the GPU -------------------------------------------------------------------------
@pytest.mark.cuda
def test_full_size_random_mvdream_fp16_on_cuda(tmp_path):
    from fsd_gs.prior.mvdream import load_mvdream_prior
    from fsd_gs.prior.mvdream_random import save_mvdream_sd21_random_pipeline
    from fsd_gs.profiling import synchronize

    folder = save_mvdream_sd21_random_pipeline(tmp_path / "mvdream-random")
    prior = load_mvdream_prior(folder, "cuda", torch.float16)
    assert prior.resolution == 256 and prior.spec == SD21
    emb = prior.encode_prompts("a photo of a red chair", view_dependent=False)
    _conditioning = emb.select(["none"] * 4)
    cond, uncond = _conditioning.cond, _conditioning.uncond
    cams = MultiViewOrbitSampler(CameraConfig(batch_size=4, width=256, height=256)).sample(torch.Generator().manual_seed(0))
    images = torch.rand(4, 3, 256, 256, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    z = prior.encode_images(images)
    assert z.shape == (4, 4, 32, 32)
    t = torch.full((4,), 500, device="cuda")
    times = []
    for _ in range(3):
        synchronize(prior.device)
        tic = time.perf_counter()
        eps = prior.predict_noise(z, t, cond, uncond, 50.0, cameras=cams.to("cuda"))
        synchronize(prior.device)
        times.append(time.perf_counter() - tic)
    assert eps.shape == (4, 4, 32, 32) and torch.isfinite(eps).all()
    print(
        f"MVDream full size fp16: guided predict_noise on 4 views at 256 px: {min(times) * 1e3:.1f} ms "
        f"(first {times[0] * 1e3:.0f} ms), peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )


@pytest.mark.parametrize("preset", ["fsd-mvdream", "sds-mvdream"])
def test_one_step_end_to_end_through_the_train_command(preset, tiny_mvdream_dir, tmp_path, capsys):
    """`python -m fsd_gs.train --config fsd-mvdream --model <folder>` on the CPU: the factory detects MVDream from
    model_index.json, the step samples 4-view groups and hands the cameras to the UNet."""
    train_multiview(
        preset,
        str(tiny_mvdream_dir),
        "a red mushroom",
        2,
        tmp_path,
        capsys,
        *["--camera.width", "64", "--camera.height", "64", "--gaussians.num-points", "300"],
        bad_batch=6,
    )
