"""--prior.compile graphs: CUDA graphs of the guided UNet call without torch.compile (fsd_gs/prior/graphs.py), and the
rule by which ``auto`` may choose it (fsd_gs/prior/compile.py, auto_mode).

On the CPU: the option, its one-sentence refusal there, the rule, and GraphedCall's bookkeeping (signatures, static
buffers, clones, eager fallbacks) with a stand-in recorder that replays by recomputing. On CUDA: real graphs against
eager (several calls, changing inputs, two batch sizes, Perp-Neg), a few training steps against eager, and the
SD-2.1-base size (with $FSD_GS_SD21_DIR or a freshly built random pipeline)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import pytest
import torch

from fsd_gs.errors import UserError
from fsd_gs.prior import compile as compile_mod
from fsd_gs.prior.compile import CACHE_ENV, AutoCosts, auto_mode, resolve_compile
from fsd_gs.prior.factory import PriorConfig, load_prior
from fsd_gs.prior.graphs import GraphedCall, unet_call
from tests.test_prior_gpu import sd21_random_dir  # noqa: F401  (the SD-2.1-base size fixture)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
Arg = Optional[torch.Tensor]


def recompute_capture(log: list[tuple]) -> Callable:
    """A stand-in for CudaGraphCapture on the CPU: ``replay`` recomputes ``fn`` from the static buffers into the static
    output (what a CUDA graph does), and each recording is logged with its static buffers."""

    def capture(fn: Callable[..., torch.Tensor], static: tuple[Arg, ...]):
        output = fn(*static)
        log.append(static)
        return (lambda: output.copy_(fn(*static))), output

    return capture


# -- the option and its refusal on a CPU -----------------------------------------------------------------
def test_graphs_is_a_mode_of_the_option_and_listed_in_help(capsys):
    from fsd_gs.config import from_dict
    from fsd_gs.train import parse_config

    assert parse_config(["--prompt", "a cat", "--prior.compile", "graphs"]).prior.compile == "graphs"
    assert from_dict({"prompt": "a cat", "prior": {"compile": "graphs"}}).prior.compile == "graphs"
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    help_text = capsys.readouterr().out
    assert "--prior.compile" in help_text and "cudagraphs,graphs" in help_text.replace(" ", "").replace("|", ",")


def test_graphs_on_a_cpu_is_one_sentence(tiny_sd_dir, tmp_path, capsys):
    with pytest.raises(UserError, match="--prior.compile graphs needs a CUDA device"):
        resolve_compile("graphs", CPU, "sd")
    with pytest.raises(UserError, match="graphs needs a CUDA device"):
        load_prior(str(tiny_sd_dir), PriorConfig(compile="graphs"), CPU)
    from fsd_gs.train import main

    argv = ["--prompt", "a cat", "--model", str(tiny_sd_dir), "--device", "cpu", "--prior.compile", "graphs"]
    assert main(argv + ["--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "graphs needs a CUDA device" in err, err
    assert not (tmp_path / "out").exists()


def test_graphs_decision_records_nothing_compiled_and_no_cache():
    decision = resolve_compile("graphs", CUDA, "sd", steps=10)
    assert decision.mode == "graphs" and decision.enabled and not decision.compiles
    assert "records CUDA graphs" in decision.expect and "compile," not in decision.expect
    assert resolve_compile("graphs", CUDA, "shapes").mode == "graphs"  # the built-in priors are recorded, not compiled
    assert resolve_compile("cudagraphs", CUDA, "shapes").mode == "off"
    assert resolve_compile("cudagraphs", CUDA, "sd").compiles and not resolve_compile("off", CUDA, "sd").compiles


# -- the rule of auto ------------------------------------------------------------------------------------
def test_auto_takes_the_fastest_mode_for_the_run_and_the_cache(tmp_path, monkeypatch):
    """On the measured costs (AutoCosts, H100): a fresh machine's 1200-step run records CUDA graphs instead of compiling
    cold; a warm cache, or a batch worker's many steps, repay the compile; tiny runs stay eager. The decision says why,
    and what its first steps cost."""
    for cache in ("cold", "warm"):
        folder = tmp_path / cache
        folder.mkdir()
        if cache == "warm":
            (folder / "fxgraph").write_text("entry")
        monkeypatch.setenv(CACHE_ENV, str(folder))
        assert compile_mod.compile_cache_warm() == (cache == "warm")
        asset = resolve_compile("auto", CUDA, "sd", steps=1200)
        assert asset.mode == ("cudagraphs" if cache == "warm" else "graphs")
        assert f"compile cache {cache}" in asset.reason and "1200 steps" in asset.reason
        assert ("warm cache" if cache == "warm" else "records CUDA graphs") in asset.expect
        worker = resolve_compile("auto", CUDA, "sd", steps=10, long_lived=True)
        assert worker.mode == "cudagraphs" and "batch worker" in worker.reason
        assert resolve_compile("auto", CUDA, "sd", steps=100).mode == "graphs"
        assert resolve_compile("auto", CUDA, "sd", steps=10).mode == "off"
        assert resolve_compile("auto", CUDA, "sd").mode == "off"  # steps unknown
        assert resolve_compile("auto", CPU, "sd", steps=1200).mode == "off"
        assert resolve_compile("auto", CUDA, "shapes", steps=10**6, long_lived=True).mode == "graphs"  # never compiled


def test_auto_minimises_the_expected_time():
    """Least expected seconds, first step + (steps - 1) x step time, on costs chosen so that each mode wins somewhere."""
    costs = AutoCosts(eager_step_ms=50, graphs_step_ms=36, cudagraphs_step_ms=30, eager_first_s=1, graphs_first_s=2)
    costs = dataclasses.replace(costs, cold_compile_first_s=90, warm_compile_first_s=10, long_lived_steps=100_000)
    picks = {
        (steps, long_lived, warm): auto_mode(steps, long_lived, warm, costs)[0]
        for steps in (None, 20, 100, 1200, 10_000)
        for long_lived in (False, True)
        for warm in (False, True)
    }
    assert picks[(20, False, True)] == "off"  # 1 + 0.95 s against 2 + 0.68 s
    assert picks[(100, False, True)] == "graphs"  # 2 + 3.6 s against 1 + 5.0 s
    assert picks[(1200, False, False)] == "graphs"  # 2 + 43 s against 90 + 36 s (cold)
    assert picks[(1200, False, True)] == "graphs"  # 2 + 43.2 s against 10 + 36.0 s, even warm
    assert picks[(10_000, False, True)] == "cudagraphs"  # 10 + 300 s against 2 + 360 s
    assert picks[(None, True, False)] == "cudagraphs"  # a batch worker: 100k steps repay a cold compile
    assert picks[(None, False, True)] == "off"  # steps unknown
    for (steps, long_lived, warm), mode in picks.items():  # the pick is the minimum, whatever the case
        horizon = 100_000 if long_lived else steps
        if horizon is not None:
            assert costs.seconds(mode, horizon, warm) == min(
                costs.seconds(m, horizon, warm) for m in ("off", "graphs", "cudagraphs")
            )


# -- GraphedCall's bookkeeping (CPU, a recomputing stand-in for the graph) -------------------------------
def test_graphed_call_records_once_per_signature_and_returns_clones():
    log: list[tuple] = []
    weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    fn = lambda x, y, labels: (x @ weight + y).relu() * (1 if labels is None else labels.sum())  # noqa: E731
    graphed = GraphedCall(fn, recompute_capture(log))
    gen = torch.Generator().manual_seed(1)
    kept, given = [], []
    with torch.no_grad():
        for batch in (2, 4, 2, 4, 2):
            x, y = torch.randn(batch, 3, generator=gen), torch.randn(batch, 3, generator=gen)
            given.append(x)
            out = graphed(x, y, None)
            assert torch.equal(out, fn(x, y, None))
            kept.append((out, out.clone()))
            assert all(out.data_ptr() != r.output.data_ptr() for r in graphed.recordings.values())
        labels = torch.ones(2)
        assert torch.equal(graphed(x, y, labels), fn(x, y, labels))  # a new signature (labels given)
    assert len(log) == 3 and len(graphed.recordings) == 3 and graphed.eager_calls == 0
    assert all(torch.equal(value, copy) for value, copy in kept)  # later replays left earlier results alone
    assert all(static.data_ptr() != x.data_ptr() for static in (log[0][0], log[1][0]) for x in given)  # its own buffers


def test_graphed_call_runs_eagerly_with_autograd_or_too_many_signatures():
    log: list[tuple] = []
    graphed = GraphedCall(lambda x: x * 2, recompute_capture(log), max_graphs=2)
    x = torch.ones(3)
    assert torch.equal(graphed(x), x * 2) and graphed.eager_calls == 1 and not log  # grad mode on
    with torch.no_grad():
        leaf = torch.ones(3, requires_grad=True)
        assert torch.equal(graphed(leaf), leaf * 2) and graphed.eager_calls == 2 and not log  # an input needs grad
        for size in (1, 2, 3, 2):
            assert torch.equal(graphed(torch.ones(size)), torch.full((size,), 2.0))
        assert len(log) == 2 and graphed.eager_calls == 3  # size 3 was the third signature: eager
        with pytest.raises(TypeError, match="tensors or None"):
            graphed(3)  # type: ignore[arg-type]


def test_a_failed_recording_names_the_shapes_and_the_way_out():
    def broken(fn, static):
        raise RuntimeError("operation not permitted when stream is capturing")

    with torch.no_grad(), pytest.raises(RuntimeError, match=r"shapes \(2, 3\), None.*--prior.compile off or cudagraphs"):
        GraphedCall(lambda x, y: x, broken)(torch.ones(2, 3), None)


def test_the_prior_calls_its_unet_through_the_hook(tiny_sd_dir):
    """DiffusersPrior._unet_raw goes through ``unet_call``: a graphed call (recomputing stand-in) predicts what the eager
    one does, with guidance (2 rows per view) and Perp-Neg's negatives (4 rows per view), one recording per batch."""
    from fsd_gs.perp_neg import PerpNegWeights, select

    prior = load_prior(str(tiny_sd_dir), device="cpu")
    embeddings = prior.encode_prompts("a red mushroom")
    gen = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([300, 700])
    plain = embeddings.select(["front", "side"])
    perp, negatives = select(embeddings, torch.tensor([30.0, 200.0]), torch.zeros(2), PerpNegWeights())
    eager = [prior.predict(z, t, plain, 7.5), prior.predict(z, t, perp, 7.5, negatives)]
    log: list[tuple] = []
    prior.unet_call = unet_call(prior.unet, "graphs", recompute_capture(log))
    for _ in range(2):
        graphed = [prior.predict(z, t, plain, 7.5), prior.predict(z, t, perp, 7.5, negatives)]
        for a, b in zip(eager, graphed):
            torch.testing.assert_close(a, b)
    assert isinstance(prior.unet_call, GraphedCall) and len(log) == 2 and prior.unet_call.eager_calls == 0
    assert [static[0].shape[0] for static in log] == [4, 2 * (2 + len(negatives.parts()))]
    assert not isinstance(unet_call(prior.unet, "off"), GraphedCall)


# -- CUDA ------------------------------------------------------------------------------------------------
def _eps_pairs(eager, graphed, batches: tuple[int, ...], calls: int, perp_neg: bool, size: int = 8):
    """(eager eps_hat, graphs eps_hat) for ``calls`` rounds over ``batches`` views, with new inputs every call (inputs
    of the prior's model shape at ``size`` x ``size`` model pixels: latents of a latent prior, images of a pixel one)."""
    from fsd_gs.perp_neg import PerpNegWeights, select

    embeddings = eager.encode_prompts("a red mushroom")
    channels = eager.model_shape(64, 64)[0]
    gen = torch.Generator(CUDA).manual_seed(0)
    pairs = []
    for call in range(calls):
        for batch in batches:
            z = torch.randn(batch, channels, size, size, device=CUDA, generator=gen)
            t = torch.randint(20, 980, (batch,), device=CUDA, generator=gen)
            azimuth = torch.linspace(-180.0, 180.0, batch + 1)[:batch] + 10.0 * call
            negatives = None
            if perp_neg:
                conditioning, negatives = select(embeddings, azimuth, torch.zeros(batch), PerpNegWeights())
            else:
                conditioning = embeddings.select(["front", "side", "back", "overhead"][:batch])
            pairs.append([prior.predict(z, t, conditioning, 7.5, negatives) for prior in (eager, graphed)])
    return pairs


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / a.float().norm().clamp_min(1e-6))


@pytest.mark.cuda
@pytest.mark.parametrize("perp_neg", [False, True])
def test_graphs_prior_matches_eager_on_cuda(tiny_sd_dir, perp_neg):
    """eps_hat of a graphs prior equals eager within fp16 tolerance over several calls with changing inputs at two
    batch sizes (one recording each), and a kept result is not overwritten by later replays."""
    eager = load_prior(str(tiny_sd_dir), PriorConfig(dtype="fp16", compile="off"), CUDA)
    graphed = load_prior(str(tiny_sd_dir), PriorConfig(dtype="fp16", compile="graphs"), CUDA)
    assert graphed.compile_decision.mode == "graphs" and isinstance(graphed.unet_call, GraphedCall)
    assert getattr(graphed.unet, "_compiled_call_impl", None) is None  # nothing torch.compiled
    pairs = _eps_pairs(eager, graphed, (2, 3), calls=4, perp_neg=perp_neg)
    kept = [(b, b.clone()) for _, b in pairs]
    for a, b in pairs:
        assert _relative(a, b) < 3e-2, perp_neg
    assert all(torch.equal(value, copy) for value, copy in kept)
    assert len(graphed.unet_call.recordings) == 2 and graphed.unet_call.eager_calls == 0
    assert graphed.unet_call.capture_s > 0


@pytest.mark.cuda
@pytest.mark.parametrize("model", ["shapes", "shapes-flow"])
def test_the_shapes_priors_are_recorded_by_auto_and_match_eager(model):
    """The built-in prior and the flow one (its VP wrapper's table is copied to the GPU before the capture) under auto
    on CUDA record their UNet call (never torch.compiled), and their guided predictions at 64 px, with Perp-Neg's
    negatives, match eager's within fp16 tolerance."""
    eager = load_prior(model, PriorConfig(dtype="fp16", compile="off"), CUDA)
    graphed = load_prior(model, PriorConfig(dtype="fp16", compile="auto"), CUDA, steps=600)
    assert graphed.compile_decision.mode == "graphs" and isinstance(graphed.unet_call, GraphedCall)
    assert getattr(graphed.unet, "_compiled_call_impl", None) is None
    for a, b in _eps_pairs(eager, graphed, (2, 8), calls=3, perp_neg=True, size=64):
        assert _relative(a, b) < 1e-2
    assert len(graphed.unet_call.recordings) == 2 and graphed.unet_call.eager_calls == 0


def _train(prior, tiny_sd_dir, steps: int):
    """(losses, final Gaussian parameters) of ``steps`` FSD steps at 64 px with 2 views, densification off."""
    from fsd_gs.config import base_config
    from fsd_gs.step import DistillStep

    cfg = base_config("fsd", None)
    cfg = dataclasses.replace(
        cfg,
        prompt="a red mushroom",
        model=str(tiny_sd_dir),
        steps=steps,
        device="cuda",
        seed=3,
        camera=dataclasses.replace(cfg.camera, width=64, height=64, batch_size=2),
        gaussians=dataclasses.replace(cfg.gaussians, num_points=2000),
        densify=dataclasses.replace(cfg.densify, enabled=False),
    )
    step = DistillStep(cfg, prior, CUDA)
    start = {k: v.detach().clone() for k, v in step.gaussians.params.items()}
    losses = [float(step().loss) for _ in range(steps)]
    return losses, start, {k: v.detach().clone() for k, v in step.gaussians.params.items()}


@pytest.mark.cuda
def test_a_graphs_training_run_matches_eager_closely(tiny_sd_dir):
    """A few whole steps (gsplat render, VAE encode and its backward, Adam) on a graphs prior: the same losses and
    the same parameter updates as eager up to fp16 and gsplat's atomics; the UNet never ran eagerly."""
    eager = load_prior(str(tiny_sd_dir), PriorConfig(dtype="fp16", compile="off"), CUDA)
    graphed = load_prior(str(tiny_sd_dir), PriorConfig(dtype="fp16", compile="graphs"), CUDA)
    losses_e, start_e, end_e = _train(eager, tiny_sd_dir, 6)
    losses_g, start_g, end_g = _train(graphed, tiny_sd_dir, 6)
    for a, b in zip(losses_e, losses_g):
        assert abs(a - b) <= 2e-2 * max(abs(a), 1e-6), (losses_e, losses_g)
    for name in end_e:
        assert torch.equal(start_e[name], start_g[name])
        moved_e, moved_g = end_e[name] - start_e[name], end_g[name] - start_g[name]
        assert float((moved_e - moved_g).norm()) <= 0.2 * float(moved_e.norm()) + 1e-6, name
    assert isinstance(graphed.unet_call, GraphedCall)
    assert len(graphed.unet_call.recordings) == 1 and graphed.unet_call.eager_calls == 0


@pytest.mark.cuda
def test_bench_step_measures_graphs_variants_one_view_and_grouped(tiny_sd_dir, tmp_path):
    """bench_step's graphs variants (one view; two seeds stepped together): start-up with the recording, one graph each."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    try:
        import bench_step
    finally:
        sys.path.pop(0)
    out = tmp_path / "bench.json"
    argv = ["--model", str(tiny_sd_dir), "--device", "cuda", "--no-fresh-process", "--warmup", "2", "--iters", "3"]
    variants = ["64px/1v/2k/graphs", "64px/2s/2k/graphs"]
    assert bench_step.main(argv + ["--variants", *variants, "--out", str(out), "--work", str(tmp_path)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == variants and all("error" not in r for r in rows), rows
    for row in rows:
        assert row["compile_decision"].startswith("graphs") and row["startup_s"]["first_step"] > 0
        assert row["graphs"]["recorded"] >= 1 and row["graphs"]["capture_s"] > 0 and row["graphs"]["eager_calls"] == 0


@pytest.mark.cuda
@pytest.mark.slow
def test_graphs_at_sd21_size_match_eager(sd21_random_dir):  # noqa: F811
    """The random-weight SD-2.1-base UNet at 512 px (64x64 latents) in fp16: 1 and 4 views, with and without Perp-Neg."""
    eager = load_prior(str(sd21_random_dir), PriorConfig(dtype="fp16", compile="off"), CUDA)
    graphed = load_prior(str(sd21_random_dir), PriorConfig(dtype="fp16", compile="graphs"), CUDA)
    for perp_neg in (False, True):
        for a, b in _eps_pairs(eager, graphed, (1, 4), calls=2, perp_neg=perp_neg, size=64):
            assert _relative(a, b) < 3e-2, perp_neg
    assert isinstance(graphed.unet_call, GraphedCall) and len(graphed.unet_call.recordings) == 4
    print(f"\nSD-2.1-base graphs: 4 recordings in {graphed.unet_call.capture_s:.2f} s")
