"""End to end on the CPU with a tiny random-weight Stable-Diffusion-layout pipeline:
outputs, .ply round trip, exact resume after an interruption, Ctrl-C, and bad options."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fsd_gs.io.ply import read_ply
from fsd_gs.step import DistillStep
from fsd_gs.train import main

ROOT = Path(__file__).resolve().parent.parent


def small_run_args(model_dir: Path, out: Path, steps: int = 6, *extra: str) -> list[str]:
    return [
        "--prompt",
        "a red mushroom",
        "--model",
        str(model_dir),
        "--steps",
        str(steps),
        "--seed",
        "1",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--camera.width",
        "64",
        "--camera.height",
        "64",
        "--camera.batch-size",
        "2",
        "--gaussians.num-points",
        "300",
        "--output.turntable-views",
        "4",
        "--output.turntable-size",
        "32",
        "--output.log-every",
        "2",
        "--output.checkpoint-every",
        "3",
        "--output.snapshot-every",
        "3",
        "--densify.refine-start-iter",
        "2",
        "--densify.refine-every",
        "2",
        "--guidance.guidance-scale",
        "7.5",
        "--output.no-progress",
        *extra,
    ]


def run_dir_from(capsys) -> Path:
    out = capsys.readouterr().out.strip().splitlines()
    return Path(out[-1])


def test_short_run_writes_every_output(tiny_sd_dir, tmp_path, capsys):
    assert main(small_run_args(tiny_sd_dir, tmp_path)) == 0
    run = run_dir_from(capsys)
    assert run.parent.parent == tmp_path and run.parent.name == "a-red-mushroom"
    for name in (
        "config.yaml",
        "model.ply",
        "report.json",
        "metrics.jsonl",
        "turntable.png",
        "checkpoints/step_000006/state.safetensors",
        "checkpoints/step_000006/state.json",
        "snapshots/step_000003.ply",
    ):
        assert (run / name).is_file(), name
    pytest.importorskip("imageio_ffmpeg")  # the [test] extra installs it: the MP4 turntable is checked in CI
    assert (run / "turntable.mp4").stat().st_size > 0
    report = json.loads((run / "report.json").read_text())
    assert report["completed"] and report["steps_done"] == 6 and report["num_gaussians"] > 0
    assert report["wall_time_s"] > 0 and "peak_rss_gb" in report
    assert Path(report["outputs"]["model_ply"]) == run / "model.ply"
    g = read_ply(run / "model.ply")
    assert len(g) == report["num_gaussians"] and torch.isfinite(g.means).all()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4, 6] and all(x["loss"] == x["loss"] for x in lines)


def test_interrupted_and_resumed_run_ends_with_the_same_gaussians(tiny_sd_dir, tmp_path, capsys, monkeypatch):
    assert main(small_run_args(tiny_sd_dir, tmp_path / "a", 8)) == 0
    straight = run_dir_from(capsys)

    original = DistillStep.__call__

    def stop_at_5(self):
        result = original(self)
        if self.steps_done == 5:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the run stops after this step
        return result

    monkeypatch.setattr(DistillStep, "__call__", stop_at_5)
    assert main(small_run_args(tiny_sd_dir, tmp_path / "b", 8)) == 130
    interrupted = run_dir_from(capsys)
    assert json.loads((interrupted / "report.json").read_text())["steps_done"] == 5
    monkeypatch.setattr(DistillStep, "__call__", original)
    assert main(["--resume", str(interrupted), "--output.no-progress"]) == 0
    assert run_dir_from(capsys) == interrupted

    ply_time = (interrupted / "model.ply").stat().st_mtime_ns
    assert main(["--resume", str(interrupted), "--output.no-progress"]) == 0  # complete: nothing to do
    assert "already complete" in capsys.readouterr().out
    assert (interrupted / "model.ply").stat().st_mtime_ns == ply_time

    a, b = read_ply(straight / "model.ply"), read_ply(interrupted / "model.ply")
    assert len(a) == len(b)
    for key in a.params:
        assert torch.equal(a.params[key], b.params[key]), key
    steps = [json.loads(x)["step"] for x in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]


@pytest.mark.slow
def test_ctrl_c_saves_checkpoint_and_ply(tiny_sd_dir, tmp_path):
    args = small_run_args(tiny_sd_dir, tmp_path, 100000)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsd_gs.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    run = None
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("run folder:"):
            run = Path(line.split(":", 1)[1].strip())
            break
    assert run is not None, proc.stderr.read()
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert out.strip().splitlines()[-1] == str(run)
    assert (run / "model.ply").is_file() and list((run / "checkpoints").glob("step_*/state.json"))
    assert "--resume" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", ""], "prompt is empty"),
        (["--prompt", "a cat", "--steps", "0"], "steps"),
        (["--prompt", "a cat", "--config", "nope"], "not found"),
        (["--prompt", "a cat", "--method", "xyz"], "--method"),
        (["--prompt", "a cat", "--model", "/nonexistent/folder"], "/nonexistent/folder"),
        (["--prompt", "a cat", "--camera.width", "100", "--camera.height", "100"], "multiple"),
    ],
)
def test_bad_options_exit_2_with_one_line(args, message, tiny_sd_dir, tmp_path, capsys):
    if "--model" not in args:
        args = [*args, "--model", str(tiny_sd_dir)]
    assert main([*args, "--output-dir", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not any(tmp_path.iterdir()), "a failed start must leave no run folder behind"


def test_unwritable_output_dir(tiny_sd_dir, tmp_path, capsys):
    blocker = tmp_path / "f"
    blocker.write_text("")
    assert main(small_run_args(tiny_sd_dir, blocker, 2)) == 2
    assert "output" in capsys.readouterr().err


def test_large_model_on_cpu_is_refused_with_the_alternative(monkeypatch, tiny_sd_dir, tmp_path, capsys):
    import fsd_gs.run.entry as runner_module  # load_prior_for reads the limit there

    monkeypatch.setattr(runner_module, "CPU_PARAM_LIMIT", 10)
    assert main(small_run_args(tiny_sd_dir, tmp_path, 2)) == 2
    err = capsys.readouterr().err
    assert "--model shapes" in err and "seconds per step" in err


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_sd_dir, tmp_path, capsys, monkeypatch):
    import dataclasses

    import fsd_gs.step as step_module

    original = step_module.distill_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 5:
            return dataclasses.replace(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(step_module, "distill_loss", poisoned)
    assert main(small_run_args(tiny_sd_dir, tmp_path, 8)) == 1
    captured = capsys.readouterr()
    run = Path(captured.out.strip().splitlines()[-1])
    assert "nan" in captured.err.lower() and "checkpoint (step 3) is kept" in captured.err
    from fsd_gs.io.checkpoint import latest_checkpoint, load_checkpoint

    folder = latest_checkpoint(run / "checkpoints")
    assert folder.name == "step_000003"
    state, _ = load_checkpoint(folder)
    assert all(torch.isfinite(v).all() for v in state["gaussians"]["params"].values())


def test_progressive_resolution_grows_the_render_to_full_size(tiny_sd_dir, tmp_path, capsys, monkeypatch):
    sizes = []
    original = DistillStep.render_size

    def spy(self):
        size = original(self)
        sizes.append(size)
        return size

    monkeypatch.setattr(DistillStep, "render_size", spy)
    args = small_run_args(tiny_sd_dir, tmp_path, 6, "--optim.progressive-start", "32", "--optim.progressive-until", "0.5")
    assert main(args) == 0
    assert sizes[0] == (32, 32) and sizes[-1] == (64, 64)
    assert all(a[0] <= b[0] for a, b in zip(sizes, sizes[1:]))  # never shrinks
    assert (run_dir_from(capsys) / "model.ply").is_file()
