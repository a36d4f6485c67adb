"""The rectified-flow shapes prior (shapes-flow): the VP -> flow conversion is exact, the folder loads by name as a
flow prior, predict is the eps of its velocity, Euler sampling is deterministic, the flow objective trains, and the
presets run FSD and SDS (docs/shapes-flow.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fsd_gs.prior.detectors import is_shapes_world
from fsd_gs.prior.factory import PriorConfig, load_prior
from fsd_gs.prior.process import FlowProcess, VPProcess
from fsd_gs.prior.shapes import (
    ShapesFlowPrior,
    ShapesPrior,
    load_shapes_flow_prior,
    load_shapes_prior,
    shapes_flow_folder,
    shapes_prior_folder,
)
from fsd_gs.prior.vp_flow import FlowOutput, VPAsFlow, vp_log_ratios, vp_time, wrap_vp_unet
from fsd_gs.shapes.model import SCHEDULER_CONFIG, folder_size, save_flow_scheduler
from tests.contract import SCRIPTS, TINY, load_script


def _abar() -> torch.Tensor:
    return VPProcess.from_config(SCHEDULER_CONFIG).alphas_cumprod.double()


class GaussianEps(torch.nn.Module):
    """The exact epsilon predictor E[eps | x] of data z0 ~ N(mu, c^2) per pixel under x = alpha z0 + sigma eps, at the
    fractional VP time t (alpha, sigma from the same log-ratio interpolation the conversion inverts)."""

    def __init__(self, mu: torch.Tensor, c: float, abar: torch.Tensor) -> None:
        super().__init__()
        self.mu, self.c, self.table = mu, c, vp_log_ratios(abar)

    def forward(self, x, t, encoder_hidden_states=None, class_labels=None):
        lo = t.floor().long().clamp(0, self.table.numel() - 2)
        table = self.table.to(t.dtype)
        log_r = torch.lerp(table[lo], table[lo + 1], t - lo).view(-1, 1, 1, 1)
        alpha = torch.rsqrt(1 + torch.exp(2 * log_r))
        sigma = alpha * torch.exp(log_r)
        return FlowOutput(sigma / (alpha**2 * self.c**2 + sigma**2) * (x - alpha * self.mu))


def _flow_truth(x_f: torch.Tensor, s: torch.Tensor, mu: torch.Tensor, c: float) -> torch.Tensor:
    """The exact velocity E[eps - z0 | x_f] of the same data under x_f = (1 - s) z0 + s eps."""
    s = s.view(-1, 1, 1, 1)
    gain = (x_f - (1 - s) * mu) / ((1 - s) ** 2 * c**2 + s**2)
    return s * gain - (mu + (1 - s) * c**2 * gain)


def test_vp_time_inverts_the_schedule_table():
    table = vp_log_ratios(_abar())
    torch.testing.assert_close(vp_time(table, table), torch.arange(1000, dtype=torch.float64), rtol=0, atol=1e-9)
    mid = 0.5 * (table[:-1] + table[1:])
    assert torch.all((vp_time(mid, table) > torch.arange(999)) & (vp_time(mid, table) < torch.arange(1, 1000)))


def test_the_conversion_is_exact_on_a_gaussian_toy():
    gen = torch.Generator().manual_seed(0)
    mu, c = torch.randn(1, 3, 4, 4, generator=gen, dtype=torch.float64) * 0.5, 0.7
    net = VPAsFlow(GaussianEps(mu, c, _abar()), _abar())
    s = torch.tensor([0.011, 0.1, 0.3, 0.4999, 0.5, 0.5001, 0.7, 0.9, 0.99, 0.993], dtype=torch.float64)
    x_f = torch.randn(len(s), 3, 4, 4, generator=gen, dtype=torch.float64)
    v = net(x_f, s * 1000, encoder_hidden_states=None).sample
    torch.testing.assert_close(v, _flow_truth(x_f, s, mu, c), rtol=1e-10, atol=1e-10)
    v32 = net(x_f.float(), (s * 1000).float(), encoder_hidden_states=None).sample  # float32 in, float32 arithmetic
    assert v32.dtype == torch.float32
    torch.testing.assert_close(v32.double(), v, rtol=1e-4, atol=1e-4)
    cpu = torch.device("cpu")  # the table is copied once per device (a CUDA-graph capture of the call copies nothing)
    assert net.log_ratios_on(cpu) is net.log_ratios_on(cpu) and torch.equal(net.log_ratios_on(cpu), net.log_ratios)


def test_the_conversion_is_finite_with_finite_gradients_at_the_ends():
    mu = torch.zeros(1, 3, 4, 4)
    inner = GaussianEps(mu, 0.5, _abar().float())
    net = VPAsFlow(inner, _abar())
    s = torch.tensor([0.0, 1e-5, 0.999, 1.0])
    x_f = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    v = net(x_f, s * 1000, encoder_hidden_states=None).sample
    v.square().sum().backward()
    assert torch.isfinite(v).all() and x_f.grad is not None and torch.isfinite(x_f.grad).all()
    # s = 1: v = x_f - x0_hat with the VP's last step's x0_hat = mu + alpha c^2 / (...) (x - alpha mu), alpha = 0.006
    torch.testing.assert_close(v[3], x_f[3].detach() - mu[0], rtol=0, atol=1e-2)


@pytest.fixture(scope="module")
def converted_folder(tmp_path_factory) -> Path:
    """A flow folder with the shipped epsilon weights and no fine-tuning (the conversion alone), shift 1."""
    import shutil

    folder = tmp_path_factory.mktemp("flow") / "shapes_flow"
    shutil.copytree(shapes_prior_folder(), folder)
    shutil.rmtree(folder / "scheduler")
    components = save_flow_scheduler(folder, 1.0)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, **components}))
    return folder


def test_the_conversion_is_exact_on_the_shipped_network_and_the_folder_clamps_x0(converted_folder):
    flow = load_shapes_prior("cpu", folder=converted_folder)
    vp = load_shapes_prior("cpu")
    assert type(flow) is ShapesFlowPrior and type(vp) is ShapesPrior and flow.unet.clip_x0 == 1.0
    table = vp_log_ratios(_abar())
    k = torch.tensor([30, 250, 499, 700, 990])  # integer VP steps: no interpolation on the VP side
    s = (torch.exp(table[k]) / (1 + torch.exp(table[k]))).float().view(-1, 1, 1, 1)
    x_f = torch.randn(len(k), 3, 64, 64, generator=torch.Generator().manual_seed(2))
    cond = vp.encode_prompts("a red chair").select(["front"] * len(k))
    exact = wrap_vp_unet(vp.unet, SCHEDULER_CONFIG)  # no clamp
    v = exact(x_f, s.flatten() * 1000, encoder_hidden_states=cond.cond).sample
    eps = vp.predict(x_f / torch.sqrt((1 - s) ** 2 + s**2), k, cond, 1.0)
    torch.testing.assert_close(v, (eps - x_f) / (1 - s), rtol=2e-4, atol=2e-4)
    clamped = flow.unet(x_f, s.flatten() * 1000, encoder_hidden_states=cond.cond).sample  # what the folder loads
    high = s.flatten() > 0.5  # x0_hat = x_f - s v is clamped to [-1, 1] there, as the epsilon prior's DDIM does
    torch.testing.assert_close(clamped[~high], v[~high])
    x0 = (x_f - s * v).clamp(-1, 1)
    torch.testing.assert_close(clamped[high], ((x_f - x0) / s)[high], rtol=2e-4, atol=2e-4)


def test_the_shipped_flow_prior_loads_by_name_and_is_small():
    prior = load_prior("shapes-flow", PriorConfig(), torch.device("cpu"))
    assert type(prior) is ShapesFlowPrior and isinstance(prior.process, FlowProcess) and prior.process.kind == "flow"
    assert isinstance(prior.unet, VPAsFlow) and prior.preset_family == "shapes-flow" and is_shapes_world("shapes-flow")
    assert (prior.resolution, prior.channels, prior.space) == (64, 3, "pixel")
    assert folder_size(shapes_flow_folder()) <= 30 * 2**20
    for name in ("config.json", "model.safetensors"):  # the shapes prior's judge, byte for byte
        assert (shapes_flow_folder() / "judge" / name).read_bytes() == (shapes_prior_folder() / "judge" / name).read_bytes()
    with pytest.raises(Exception, match="not a rectified-flow prior"):
        load_shapes_flow_prior("cpu", folder=shapes_prior_folder())


def test_predict_is_the_eps_of_the_guided_velocity():
    prior = load_shapes_flow_prior("cpu")
    cond = prior.encode_prompts("a blue car").select(["front", "back", "side"])
    z = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 500, 999])
    eps = prior.predict(z, t, cond, 2.5)
    v = prior.predict_raw(z, t, cond, 2.5)
    assert eps.shape == (3, 3, 64, 64) and torch.isfinite(eps).all() and torch.isfinite(v).all()
    s = prior.process.sigma(t).view(-1, 1, 1, 1)
    torch.testing.assert_close(eps, z + (1 - s) * v)  # x_t = (1 - s) x0 + s eps and v = eps - x0


def test_euler_sampling_runs_and_is_deterministic_per_seed():
    from fsd_gs.sampling import sample

    prior = load_shapes_flow_prior("cpu")
    cond = prior.encode_prompts("a green tree").select(["front", "side"])

    def draw(seed: int) -> torch.Tensor:
        noise = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        return sample(prior, noise, cond, 2.5, steps=3)

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (2, 3, 64, 64) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tiny_flow_training_run_writes_a_flow_prior_and_resumes(tmp_path, monkeypatch, capsys):
    mod = load_script("train_shapes_prior", monkeypatch)
    out = tmp_path / "run"
    args = ["--objective", "flow", "--out", str(out), "--tiny", "--device", "cpu", "--flow-shift", "2.0"]
    mod.main([*args, "--steps", "2"])
    folder = out / "shapes_flow"
    meta = json.loads((folder / "shapes.json").read_text())["training"]
    assert (meta["step"], meta["segments"]) == (2, 1) and meta["init_from"]["folder"] == str(shapes_prior_folder())
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) and r["loss"] > 0 for r in rows)
    prior = load_shapes_prior("cpu", folder=folder)
    assert type(prior) is ShapesFlowPrior and prior.process.shift == 2.0 and isinstance(prior.unet, VPAsFlow)
    judge = (folder / "judge" / "model.safetensors").read_bytes()
    assert judge == (shapes_prior_folder() / "judge" / "model.safetensors").read_bytes()
    mod.main([*args, "--steps", "3", "--resume"])
    assert "resumed at step 2 (segment 1)" in capsys.readouterr().out
    assert json.loads((folder / "shapes.json").read_text())["training"]["step"] == 3
    assert (folder / "judge" / "model.safetensors").read_bytes() == judge


def test_flow_presets_are_the_model_default_and_differ_from_the_shapes_pair_in_model_and_cfg():
    from fsd_gs.train import parse_config
    from tests.test_config import differing

    for method in ("fsd", "sds"):
        # both flow presets take their shapes twin's Perp-Neg weights; shapes-fsd-flow's CFG is 2.25 (BENCHMARKS.md,
        # round 3, seventh session), shapes-sds-flow's SDS scale is shapes-sds's
        allowed = {"model", "guidance.guidance_scale"}
        assert differing(f"shapes-{method}", f"shapes-{method}-flow") - {"config"} <= allowed
        cfg = parse_config(["--model", "shapes-flow", "--method", method, "--prompt", "a red chair"])
        assert (cfg.model, cfg.method, cfg.steps, cfg.camera.width, cfg.gaussians.num_points) == (
            "shapes-flow",
            method,
            600,
            64,
            2000,
        )
        cfg.validate()
    assert parse_config(["--model", "shapes-flow", "--prompt", "a red chair"]).guidance.perp_neg


@pytest.mark.parametrize("preset", ["shapes-fsd-flow", "shapes-sds-flow"])
def test_three_steps_train_on_shapes_flow(preset, tmp_path, capsys):
    from fsd_gs.io.ply import read_ply
    from fsd_gs.train import main

    args = ["--config", preset, "--prompt", "a red chair", "--steps", "3", *TINY, "--output-dir", str(tmp_path)]
    args += ["--output.turntable-views", "2", "--output.turntable-size", "32", "--viewer.no-enabled", "--output.no-progress"]
    assert main(args) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(read_ply(run / "model.ply")) > 0
    assert json.loads((run / "report.json").read_text())["steps_done"] == 3


def test_the_prior_check_reads_a_flow_folder_with_its_preset_cfg_and_targets(monkeypatch):
    import yaml

    mod = load_script("eval_shapes_prior", monkeypatch)
    preset = yaml.safe_load((SCRIPTS.parent / "configs" / "shapes-fsd-flow.yaml").read_text())
    assert mod.folder_of(mod.EvalConfig(model="shapes-flow")) == shapes_flow_folder()
    assert mod.preset_cfg(shapes_flow_folder()) == preset["guidance"]["guidance_scale"]
    assert mod.thresholds(shapes_flow_folder())["colour_free_kind"] == 0.95
    assert mod.thresholds(shapes_flow_folder())["colour_entropy_ratio"] == 0.85
    assert "colour_free_kind" not in mod.thresholds(shapes_prior_folder())
