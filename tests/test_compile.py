"""--prior.compile: parsing and old configs, the auto decision, the compile cache, bench_step's protocol (CPU);
compiled and CUDA-graph priors against eager ones (CUDA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fsd_gs.errors import UserError
from fsd_gs.prior.compile import (
    CACHE_ENV,
    compile_cache_dir,
    compile_module,
    resolve_compile,
    setup_compile_cache,
)
from fsd_gs.prior.conditioning import Conditioning
from fsd_gs.prior.factory import PriorConfig, load_prior

ROOT = Path(__file__).resolve().parent.parent
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


# -- the option ------------------------------------------------------------------------------------
def test_compile_option_parses_modes_and_defaults_to_auto():
    from fsd_gs.train import parse_config

    assert parse_config(["--prompt", "a cat"]).prior.compile == "auto"
    for mode in ("off", "on", "cudagraphs", "graphs", "auto"):
        assert parse_config(["--prompt", "a cat", "--prior.compile", mode]).prior.compile == mode
    with pytest.raises(SystemExit):
        parse_config(["--prompt", "a cat", "--prior.compile", "fast"])


@pytest.mark.parametrize(
    "text, mode", [("false", "off"), ("true", "on"), ("off", "off"), ("on", "on"), ("cudagraphs", "cudagraphs"), ("'off'", "off")]
)
def test_old_and_yaml_boolean_compile_values_read_as_modes(text, mode):
    from fsd_gs.config import from_dict

    data = yaml.safe_load(f"prompt: a cat\nprior:\n  compile: {text}\n")
    assert from_dict(data).prior.compile == mode


def test_a_bad_compile_value_in_a_preset_is_one_sentence():
    from fsd_gs.config import from_dict

    with pytest.raises(UserError, match="prior.compile.*must be one of"):
        from_dict({"prompt": "a cat", "prior": {"compile": "fast"}})


def test_a_run_saved_with_compile_false_resumes_and_may_change_compile(tmp_path):
    from fsd_gs.config import TrainConfig, to_dict
    from fsd_gs.run import check_resume_changes, saved_config
    from fsd_gs.run_dir import RunPaths
    from fsd_gs.train import parse_config

    data = to_dict(TrainConfig(prompt="a red mushroom", model="shapes"))
    data.pop("resume")
    data["prior"]["compile"] = False  # what config.yaml said before --prior.compile had modes
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    saved, _ = saved_config(RunPaths(tmp_path))
    assert saved.prior.compile == "off"
    given = parse_config(["--resume", str(tmp_path)])
    assert given.prior.compile == "off" and check_resume_changes(saved, given) == {}
    changed = parse_config(["--resume", str(tmp_path), "--prior.compile", "on"])
    assert check_resume_changes(saved, changed) == {"prior.compile": ("off", "on")}  # harmless: speed only


def test_explicit_modes_and_errors():
    assert resolve_compile("on", CPU, "sd").mode == "on"
    assert resolve_compile(True, CUDA, "sd").mode == "on" and resolve_compile(False, CUDA, "sd").mode == "off"
    assert resolve_compile("cudagraphs", CUDA, "sd", steps=5).mode == "cudagraphs"
    assert resolve_compile("on", CUDA, "shapes").mode == "off"  # the shapes prior is never torch.compiled
    assert resolve_compile("auto", CUDA, "shapes", steps=600).mode == "graphs"  # recorded, never compiled
    assert resolve_compile("auto", CUDA, "shapes-flow", steps=600).mode == "graphs"  # its VP wrapper's table: copied once
    assert resolve_compile("auto", CUDA, "shapes-mv", steps=600).mode == "off"  # never recorded on a GPU
    assert resolve_compile("auto", CPU, "shapes", steps=600).mode == "off"
    assert resolve_compile("graphs", CUDA, "shapes-mv").mode == "graphs"  # a recording of its UNet call is allowed
    with pytest.raises(UserError, match="cudagraphs needs a CUDA device"):
        resolve_compile("cudagraphs", CPU, "sd")
    with pytest.raises(UserError, match="must be one of"):
        resolve_compile("fast", CUDA, "sd")
    with pytest.raises(ValueError, match="resolve auto first"):
        compile_module(torch.nn.Linear(2, 2), "auto")
    linear = torch.nn.Linear(2, 2)
    compile_module(linear, "off")
    assert "_compiled_call_impl" not in linear.__dict__ or linear._compiled_call_impl is None


# -- the cache -------------------------------------------------------------------------------------
def test_cache_folder_defaults_and_overrides(tmp_path):
    assert compile_cache_dir({"HOME": "/h"}) == Path.home() / ".cache" / "fsd_gs" / "compile"
    assert compile_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/fsd_gs/compile")
    assert compile_cache_dir({CACHE_ENV: str(tmp_path / "c"), "XDG_CACHE_HOME": "/x"}) == tmp_path / "c"


def test_setup_compile_cache_sets_only_what_the_user_did_not(tmp_path):
    env = {CACHE_ENV: str(tmp_path / "mine")}
    changed = setup_compile_cache(env)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine") and (tmp_path / "mine").is_dir()
    assert env["TORCHINDUCTOR_FX_GRAPH_CACHE"] == env["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "1"
    assert set(changed) == {"TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"}
    user = {
        CACHE_ENV: str(tmp_path / "mine"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "theirs"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
    }
    changed = setup_compile_cache(user)
    assert user["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "theirs") and user["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "0"
    assert set(changed) == {"TORCHINDUCTOR_AUTOGRAD_CACHE"}
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    torchs = {CACHE_ENV: str(tmp_path / "mine"), "TORCHINDUCTOR_CACHE_DIR": default_cache_dir()}  # set by torch itself
    setup_compile_cache(torchs)
    assert torchs["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_nothing_is_compiled_or_set_when_compile_is_off_on_the_cpu(tiny_sd_dir, monkeypatch, tmp_path, mode):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    prior = load_prior(str(tiny_sd_dir), PriorConfig(compile=mode), "cpu", steps=10**6, long_lived=True)
    assert prior.compile_decision.mode == "off" and prior.load_seconds > 0
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(tmp_path / "cache") and not (tmp_path / "cache").exists()
    assert getattr(prior.unet, "_compiled_call_impl", None) is None


def test_the_vae_sees_one_layout_whatever_the_render_strides(tiny_sd_prior):
    images = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    permuted = images.permute(0, 3, 1, 2)  # how renders arrive
    seen = []
    hook = tiny_sd_prior.vae.encoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous()))
    try:
        a = tiny_sd_prior.encode_images(permuted)
        b = tiny_sd_prior.encode_images(permuted.contiguous())
    finally:
        hook.remove()
    assert seen == [True, True] and torch.equal(a, b)


# -- bench_step ------------------------------------------------------------------------------------
def test_bench_step_variant_names_round_trip():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_step
    finally:
        sys.path.pop(0)
    for variants in bench_step.GRIDS.values():
        for v in variants:
            assert bench_step.Variant.parse(v.name) == v
    assert bench_step.Variant.parse("512px/4s/100k/graphs") == bench_step.Variant(512, 1, 100_000, "graphs", seeds=4)
    separate = bench_step.Variant.parse("512px/8s/100k/graphs/separate")
    assert (separate.seeds, separate.join, separate.name) == (8, False, "512px/8s/100k/graphs/separate")
    assert bench_step.train_config("shapes", "a fish", separate, torch.device("cpu")).render.join_assets is False
    with pytest.raises(UserError, match="is not RESpx"):
        bench_step.Variant.parse("512/1/100k")


@pytest.mark.slow
def test_bench_step_runs_a_chosen_variant_in_a_child_process(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bench_step.py"),
        "--model",
        "shapes",
        "--device",
        "cpu",
        "--variants",
        "32px/1v/1k/eager",
        "--warmup",
        "1",
        "--iters",
        "1",
        "--out",
        str(out),
        "--work",
        str(tmp_path),
        "--guidance-scale",
        "7.5",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and "error" not in rows[0], rows
    row = rows[0]
    assert row["variant"] == "32px/1v/1k/eager" and row["process_s"] > 0 and row["step_ms"] > 0
    assert set(row["startup_s"]) == {"gsplat_first_render", "prior_load", "first_step", "rest_of_warmup", "total"}
    assert Path(row["log"]).is_file() and not (tmp_path / "bench_32px_1v_1k_eager_run0.json").exists()


def test_bench_step_grouped_variant_steps_seeds_together_with_the_views_prior_work(tmp_path):
    """512px/4s/... = 4 assets of one view stepped by step_together: the same prior batch as 4 views (the floor is
    measured at 4 views), every asset's stages added up."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_step
    finally:
        sys.path.pop(0)
    grouped = bench_step.Variant.parse("32px/2s/1k/eager")
    assert (grouped.seeds, grouped.views, grouped.batch) == (2, 1, 2) and grouped.name == "32px/2s/1k/eager"
    assert bench_step.Variant.parse("32px/2v/1k/eager").batch == 2
    out = tmp_path / "bench.json"
    assert (
        bench_step.main(
            [
                "--model",
                "shapes",
                "--device",
                "cpu",
                "--variants",
                "32px/2s/1k/eager",
                "--no-fresh-process",
                "--warmup",
                "1",
                "--iters",
                "2",
                "--out",
                str(out),
                "--work",
                str(tmp_path),
            ]
        )
        == 0
    )
    row = json.loads(out.read_text())["rows"][0]
    assert row["variant"] == "32px/2s/1k/eager" and row["seeds"] == 2 and row["step_ms"] > 0
    assert {"render", "prior", "backward", "optimizer"} <= set(row["stages_ms"])


def test_bench_step_measures_a_stable_diffusion_3_prior(tiny_sd3_dir, tmp_path):
    """bench_step on the tiny SD3 pipeline (T5 on): the model's own preset, the transformer's guided call as the floor's
    denoiser, the VAE encoder's forward and backward, and the peak memory fields; --prior-t5 reaches the child."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_step
    finally:
        sys.path.pop(0)
    out = tmp_path / "bench.json"
    argv = ["--model", str(tiny_sd3_dir), "--device", "cpu", "--variants", "32px/1v/1k/eager", "--prior-t5", "on"]
    argv += ["--no-fresh-process", "--warmup", "1", "--iters", "2", "--out", str(out), "--work", str(tmp_path)]
    assert bench_step.main(argv) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert (row["prior"], row["denoiser"], row["prior_t5"], row["prior_dtype"]) == (
        "StableDiffusion3Prior",
        "transformer",
        "on",
        "float32",
    )
    assert row["unet_guided_ms"] > 0 and row["vae_encode_fwd_bwd_ms"] > 0 and row["step_ms"] > 0
    assert row["floor_ms"] == pytest.approx(row["unet_guided_ms"] + row["vae_encode_fwd_bwd_ms"], abs=0.02)
    assert row["peak_allocated_gb"] is None and row["peak_host_rss_gb"] > 0  # no GPU here; the host's peak is kept
    import tyro

    args = tyro.cli(bench_step.Args, args=argv)
    child = bench_step.child_argv(args, str(tiny_sd3_dir), bench_step.Variant.parse("32px/1v/1k/eager"), out)
    assert child[child.index("--prior-t5") + 1] == "on"


# -- CUDA ------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["on", "cudagraphs", "graphs"])
def test_compiled_prior_matches_eager_on_cuda(tiny_sd_dir, mode, tmp_path, monkeypatch):
    """FSD loss, latents, guided noise and the image gradient of a compiled (and CUDA-graph) prior equal eager
    within fp16 tolerance, over several steps (warm-up, recording, replays), and kept results stay intact."""
    from fsd_gs.distill import distill_loss

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    eager = load_prior(str(tiny_sd_dir), PriorConfig(dtype="fp16", compile="off"), CUDA)
    compiled = load_prior(str(tiny_sd_dir), PriorConfig(dtype="fp16", compile=mode), CUDA)
    assert compiled.compile_decision.mode == mode and (tmp_path / "cache").is_dir() == (mode != "graphs")
    _conditioning = eager.encode_prompts("a red mushroom").select(["front", "side"])
    cond, uncond = _conditioning.cond, _conditioning.uncond
    gen = torch.Generator(CUDA).manual_seed(0)
    kept = []
    for step in range(5):
        images = torch.rand(2, 64, 64, 3, device=CUDA, generator=gen).permute(0, 3, 1, 2)  # render strides
        eps = torch.randn(2, 4, 8, 8, device=CUDA, generator=gen)
        t = torch.tensor([300 + 100 * step, 700], device=CUDA)
        results = []
        for prior in (eager, compiled):
            x = images.clone().requires_grad_(True)
            out = distill_loss(prior, x, eps, t, Conditioning(cond, uncond), 7.5, return_predictions=True)
            out.loss.backward()
            results.append((out.loss.detach(), out.aux["eps_hat"], x.grad))
        for a, b in zip(*results):
            assert float((a.float() - b.float()).norm() / a.float().norm().clamp_min(1e-6)) < 3e-2, (step, mode)
        kept.append((results[1][1], results[1][1].clone()))
    for value, copy in kept:  # a later replay did not overwrite what an earlier step returned
        assert torch.equal(value, copy)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["cudagraphs", "graphs"])
def test_cuda_graph_prior_trains_a_few_steps_with_densification(tiny_sd_dir, tmp_path, monkeypatch, mode):
    """The whole step (gsplat render, densification changing the Gaussian count) on a CUDA-graph prior."""
    import dataclasses

    from fsd_gs.config import base_config
    from fsd_gs.step import DistillStep

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    prior = load_prior(str(tiny_sd_dir), PriorConfig(dtype="fp16", compile=mode), CUDA)
    cfg = base_config("fsd", None)
    cfg = dataclasses.replace(
        cfg,
        prompt="a red mushroom",
        model=str(tiny_sd_dir),
        steps=30,
        device="cuda",
        camera=dataclasses.replace(cfg.camera, width=64, height=64, batch_size=2),
        gaussians=dataclasses.replace(cfg.gaussians, num_points=2000),
        densify=dataclasses.replace(cfg.densify, refine_start_iter=2, refine_every=5, refine_stop_iter=25, grow_grad2d=1e-12),
    )  # every Gaussian grows: the count changes
    step = DistillStep(cfg, prior, CUDA)
    counts = set()
    for _ in range(cfg.steps):
        result = step()
        assert torch.isfinite(result.loss)
        counts.add(len(step.gaussians))
    assert step.params_finite() and len(counts) > 1


# -- gsplat's JIT build: once per machine, under a file lock ----------------------------------------------
GSPLAT_BUILDER = """
import os, sys, time, types
from pathlib import Path
import torch.utils.cpp_extension as ext

root, workers = Path(os.environ["TORCH_EXTENSIONS_DIR"]), int(sys.argv[1])

def fake_jit_compile(name, sources, *rest, **kwargs):  # torch's JIT build (gsplat passes build_directory 7th)
    so = Path(rest[4]) / f"{name}.so"
    event = "load" if so.exists() else "build"
    if event == "build":  # a real build takes minutes: wait until every process has started, so all overlap
        deadline = time.time() + 120
        while len(list(root.glob("started.*"))) < workers and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the last one to start gets to look for the extension too
        (so.parent / f"{name}.cuda.o").write_bytes(b"objects")
        so.write_bytes(b"extension")
    with open(root / "events.log", "a") as f:
        f.write(f"{event} {os.getpid()}\\n")
    return types.ModuleType(name)

ext._jit_compile = fake_jit_compile
ext._find_cuda_home = lambda: str(root / "cuda")  # a CUDA toolkit with bin/nvcc (made by the test)
from fsd_gs.render.gsplat_backend import ensure_gsplat_built, gsplat_build_folder
(root / f"started.{os.getpid()}").touch()
ensure_gsplat_built()
ensure_gsplat_built()  # a second call in one process is free
assert (gsplat_build_folder() / "gsplat_cuda.so").read_bytes() == b"extension"
"""


def test_gsplat_jit_build_runs_once_when_several_processes_start_together(tmp_path):
    """4 processes start on a fresh extensions folder at once (the build mocked on the CPU: torch's _jit_compile
    replaced): exactly one builds, the others wait for its lock and load what it built, and all succeed."""
    pytest.importorskip("gsplat")
    root = tmp_path / "torch_extensions"
    (root / "cuda" / "bin").mkdir(parents=True)
    (root / "cuda" / "bin" / "nvcc").write_text("#!/bin/sh\n")
    workers = 4
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(root), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GSPLAT_BUILDER, str(workers)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    events = sorted(line.split()[0] for line in (root / "events.log").read_text().splitlines())
    assert events == ["build"] + ["load"] * (workers - 1), events
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("building its CUDA extension once") == 1
    assert (root / "gsplat_cuda" / "gsplat_cuda.cuda.o").is_file()  # nobody deleted the builder's objects


def test_a_fresh_batch_worker_says_what_it_compiles_and_how_long_that_takes(tmp_path, monkeypatch, capsys):
    """The batch's note for a worker's first unit: gsplat's build while none is there, the prior's compilation with
    the cold or the warm figure depending on the compile cache; nothing on the CPU."""
    import dataclasses as dc

    from fsd_gs.batch.progress import GridProgress, startup_note
    from fsd_gs.config import base_config
    from fsd_gs.prior.compile import FIRST_STEP_COLD_S, FIRST_STEP_WARM_S

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    cfg = dc.replace(base_config("fsd", None), prompt="a corgi", model="some/sd21", steps=1200)
    assert startup_note(cfg, "cpu") is None and startup_note(dc.replace(cfg, model="shapes"), "cpu") is None
    cold = startup_note(cfg, "cuda")
    assert cold is not None and "gsplat builds its CUDA extension" in cold and f"~{FIRST_STEP_COLD_S} s" in cold
    (tmp_path / "ext" / "gsplat_cuda" / "gsplat_cuda.so").write_bytes(b"built")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "fxgraph").write_text("cached")
    warm = startup_note(cfg, "cuda")
    assert warm is not None and "gsplat" not in warm and f"~{FIRST_STEP_WARM_S} s with the warm cache" in warm
    assert startup_note(dc.replace(cfg, model="shapes"), "cuda") is None  # built, and shapes is never compiled
    GridProgress(4, 0, enabled=False).starting("worker0", warm)
    assert capsys.readouterr().out.strip() == f"worker0: {warm}"
