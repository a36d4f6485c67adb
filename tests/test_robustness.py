"""Nothing lost: kills at every checkpoint write, SIGTERM, concurrent resume, torn metrics, damaged configs,
resume with changed flags, NaN inputs, absurd sizes. Each case of the "Nothing lost" issue is a test here
(bad preset types: tests/test_config.py; determinism at 1, 2 and 4 threads: tests/test_step.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bad_inputs  # noqa: E402

from fsd_gs.io.checkpoint import checkpoint_folders, latest_checkpoint  # noqa: E402
from fsd_gs.io.ply import read_ply, write_ply  # noqa: E402
from fsd_gs.train import main  # noqa: E402

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def shapes_args(out: Path, steps: int = 6, *extra: str) -> list[str]:
    """A few-second run of the built-in prior (scripts/bad_inputs.py's SMALL: 32 px, 300 Gaussians, a checkpoint
    every 2 steps), seed 3, a metrics line every step, no snapshots."""
    return [
        *bad_inputs.SMALL,
        "--steps",
        str(steps),
        "--seed",
        "3",
        "--output-dir",
        str(out),
        "--output.log-every",
        "1",
        "--output.snapshot-every",
        "0",
        *extra,
    ]


def last_line(capsys) -> Path:
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


def same_gaussians(a: Path, b: Path) -> None:
    ga, gb = read_ply(a / "model.ply"), read_ply(b / "model.ply")
    assert len(ga) == len(gb)
    for key in ga.params:
        assert torch.equal(ga.params[key], gb.params[key]), key


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must end equal to."""
    out = tmp_path_factory.mktemp("straight")
    assert main(shapes_args(out)) == 0
    return next(out.glob("*/*"))


# -- 1. a kill at any point of a checkpoint write leaves a resumable run ------------------------------
def killer(patches: str) -> str:
    """A script that runs ``fsd_gs.train``'s main on argv[2:] after ``patches`` (Python source) wrapped some of
    its filesystem calls in ``lethal``: the argv[1]-th such call, counted over all of them, exits at once (137)."""
    head = textwrap.dedent("""
        import os, shutil, sys, types
        calls = {"n": 0}
        target = int(sys.argv[1])
        def lethal(fn):
            def wrapper(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == target:
                    os._exit(137)  # as abrupt as SIGKILL: no cleanup, no finally
                return fn(*args, **kwargs)
            return wrapper
    """)
    tail = "from fsd_gs.train import main\nsys.exit(main(sys.argv[2:]))\n"
    return head + textwrap.dedent(patches) + tail


def kill_at(script: Path, k: int, out: Path) -> None:
    """Run a :func:`killer` ``script`` on :func:`shapes_args` into ``out``; it must die at the k-th call (exit 137)."""
    args = [sys.executable, str(script), str(k), *shapes_args(out)]
    proc = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, (k, proc.stderr[-2000:])


KILLER = killer("""
    import fsd_gs.io.checkpoint as ck
    ck.os = types.SimpleNamespace(**{**vars(os), "rename": lethal(os.rename), "fsync": lethal(os.fsync)})
    ck.fsync_dir = lethal(ck.fsync_dir)
    ck.shutil = types.SimpleNamespace(rmtree=lethal(shutil.rmtree))
""")


@pytest.mark.slow
def test_a_kill_at_every_checkpoint_write_leaves_a_resumable_run(straight, tmp_path, capsys):
    """Kill (os._exit) at the k-th fsync / rename / delete of the checkpoint code, for every k of the run's
    three checkpoints; each time a resume finishes with exactly the uninterrupted run's Gaussians."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    # Per checkpoint: 2 file fsyncs, the temp folder's fsync, the rename, the parent's fsync; the third
    # checkpoint (step 6) also deletes the first: 16 points in all.
    for k in range(1, 17):
        out = tmp_path / f"k{k}"
        kill_at(script, k, out)
        run = next(out.glob("*/*"))
        for folder in checkpoint_folders(run / "checkpoints"):  # whatever is committed is complete
            assert latest_checkpoint(run / "checkpoints") is not None and folder.is_dir()
        assert main(["--resume", str(run), "--output.no-progress", "--viewer.no-enabled"]) == 0, k
        assert last_line(capsys) == run
        same_gaussians(straight, run)
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 7)), (k, steps)


FIRST_WRITE_KILLER = killer("""
    import fsd_gs.io.atomic as atomic, fsd_gs.run_dir as run_dir
    atomic.os = types.SimpleNamespace(**{**vars(os), "fsync": lethal(os.fsync), "replace": lethal(os.replace)})
    run_dir.os = types.SimpleNamespace(**{**vars(os), "rename": lethal(os.rename)})
""")


@pytest.mark.slow
def test_a_kill_at_the_first_write_leaves_nothing_or_a_resumable_run(straight, tmp_path, capsys):
    """Kill at the k-th fsync / replace of the atomic writes and the rename that publishes the run folder:
    the first four are config.yaml's (file fsync, replace, folder fsync) and the folder's rename, so no
    run folder is visible yet; the fifth comes after it, and that run resumes to the uninterrupted one."""
    script = tmp_path / "killer.py"
    script.write_text(FIRST_WRITE_KILLER)
    for k in range(1, 6):
        out = tmp_path / f"k{k}"
        kill_at(script, k, out)
        runs = [p for p in out.glob("*/*") if not p.name.startswith(".")]  # hidden: an unpublished temporary folder
        if k <= 4:
            assert runs == [], k
            assert main(shapes_args(out)) == 0  # the output folder takes a new run as if nothing happened
            same_gaussians(straight, last_line(capsys))
            continue
        assert len(runs) == 1 and (runs[0] / "config.yaml").is_file(), (k, runs)
        assert main(["--resume", str(runs[0]), "--output.no-progress", "--viewer.no-enabled"]) == 0, k
        assert last_line(capsys) == runs[0]
        same_gaussians(straight, runs[0])


# -- 2. SIGTERM (and SIGHUP) save and exit with the conventional code ------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_save_and_stop_resumably(sig, code, tmp_path):
    args = shapes_args(tmp_path, 100000, "--output.checkpoint-every", "0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsd_gs.train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    run = None
    deadline = time.time() + 120
    while time.time() < deadline and run is None:
        line = proc.stdout.readline()
        if line.startswith("run folder:"):
            run = Path(line.split(":", 1)[1].strip())
    assert run is not None, proc.stderr.read()
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "stopped at step" in err and f"--resume {run}" in err
    assert (run / "model.ply").is_file() and latest_checkpoint(run / "checkpoints") is not None
    report = json.loads((run / "report.json").read_text())
    assert not report["completed"] and report["steps_done"] > 0


# -- 4. two processes on one run -----------------------------------------------------------------
@pytest.mark.slow
def test_a_second_process_on_a_run_gets_one_sentence_and_a_dead_owner_is_taken_over(tmp_path, capsys):
    assert main(shapes_args(tmp_path, 4)) == 0
    run = last_line(capsys)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fsd_gs.run import RunLock; "
            "lock = RunLock(sys.argv[1]).__enter__(); print('locked', flush=True); time.sleep(600)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        metrics = (run / "metrics.jsonl").read_text()
        assert main(["--resume", str(run), "--steps", "6", "--output.no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"in use by process {holder.pid}" in err
        assert (run / "metrics.jsonl").read_text() == metrics  # nothing of the owner's was touched
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock; the stale .lock file stays behind
        holder.wait()
    assert (run / ".lock").is_file()
    assert main(["--resume", str(run), "--steps", "6", "--output.no-progress"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # one line per step: no run went twice


# -- 5. torn metrics, damaged config -------------------------------------------------------------
def interrupted_run(out: Path, capsys, steps_done: int = 4) -> Path:
    """A finished short run (resuming it with more --steps continues it)."""
    assert main(shapes_args(out, steps_done)) == 0
    return last_line(capsys)


def test_a_torn_metrics_line_is_repaired_on_resume(tmp_path, capsys):
    run = interrupted_run(tmp_path, capsys)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.1')  # a write cut by a kill
    assert main(["--resume", str(run), "--steps", "6", "--output.no-progress"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("damage", ["steps: [\n", "- a list\n", "steps: many\n", ""])
def test_a_damaged_config_is_one_sentence(damage, tmp_path, capsys):
    run = interrupted_run(tmp_path, capsys)
    (run / "config.yaml").write_text(damage)
    assert main(["--resume", str(run), "--output.no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.yaml" in err


# -- 6. resume refuses flags that change the run, records --steps ----------------------------------
@pytest.mark.parametrize(
    "flag", [["--prompt", "a blue car"], ["--seed", "9"], ["--guidance.guidance-scale", "3"], ["--steps", "2"]]
)
def test_resume_refuses_flags_that_change_the_run(flag, tmp_path, capsys):
    run = interrupted_run(tmp_path, capsys)
    before = (run / "config.yaml").read_text()
    assert main(["--resume", str(run), *flag, "--output.no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("cannot change" in err or "only extend" in err)
    assert (run / "config.yaml").read_text() == before


def test_resume_extends_steps_and_records_it(tmp_path, capsys):
    run = interrupted_run(tmp_path, capsys)
    assert main(["--resume", str(run), "--steps", "6", "--output.no-progress"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["steps"] == 6 and saved["resumed"] == [{"changed": {"steps": [4, 6]}}]
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 6 and report["steps_done"] == 6 and report["prompt"] == saved["prompt"]


# -- 8, 11. NaN rows in .ply inputs ----------------------------------------------------------------
def nan_ply(path: Path, n: int = 400, bad: int = 1, seed: int = 0) -> Path:
    from fsd_gs.gaussians import GaussiansConfig, random_ball_gaussians

    g = random_ball_gaussians(GaussiansConfig(num_points=n), torch.Generator().manual_seed(seed))
    g.params["means"].data[:bad, 0] = float("nan")
    return write_ply(g, path)


def test_init_ply_with_nan_rows_drops_them_with_a_count(tmp_path, capsys):
    ply = nan_ply(tmp_path / "init.ply", bad=3)
    assert main(shapes_args(tmp_path / "out", 3, "--gaussians.init-ply", str(ply))) == 0
    captured = capsys.readouterr()
    assert "warning: dropped 3 of 400 Gaussians with NaN or Inf parameters" in captured.err
    model = read_ply(Path(captured.out.strip().splitlines()[-1]) / "model.ply")
    assert all(torch.isfinite(v).all() for v in model.params.values())


def test_init_ply_with_only_nan_rows_is_refused(tmp_path, capsys):
    ply = nan_ply(tmp_path / "init.ply", n=5, bad=5)
    assert main(shapes_args(tmp_path / "out", 3, "--gaussians.init-ply", str(ply))) == 2
    assert "all 5 Gaussians have NaN" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("config.yaml"))


def test_standalone_viewer_drops_nan_rows_and_counts_the_rest(tmp_path, capsys):
    from fsd_gs.viewer.standalone import ViewPlyConfig, load_gaussian_params
    from fsd_gs.viewer.standalone import main as view_main

    ply = nan_ply(tmp_path / "v.ply", n=8000, bad=1)
    with pytest.warns(UserWarning, match="dropped 1 of 8000"):
        params = load_gaussian_params(ply)
    assert params["means"].shape[0] == 7999 and torch.isfinite(params["means"]).all()
    assert ViewPlyConfig(path=ply).path == ply
    assert view_main([str(nan_ply(tmp_path / "all.ply", n=8, bad=8)), "--port", "0"]) == 2
    assert "all 8 Gaussians have NaN" in capsys.readouterr().err


# -- 9, 10. non-finite numbers, absurd sizes, the NaN message --------------------------------------
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--guidance.guidance-scale", "nan"], "--guidance.guidance-scale must be a finite number"),
        (["--optim.lr.means", "inf"], "--optim.lr.means must be a finite number"),
        (["--camera.width", "100000"], "camera.width and camera.height must lie in 1..4096"),
    ],
)
def test_absurd_numbers_are_one_sentence(extra, message, tmp_path, capsys):
    assert main(shapes_args(tmp_path, 3, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not any(tmp_path.iterdir())


def test_a_diverged_run_without_a_checkpoint_says_so(tmp_path, capsys, monkeypatch):
    import dataclasses

    import fsd_gs.step as step_module

    original = step_module.distill_loss
    monkeypatch.setattr(
        step_module, "distill_loss", lambda *a, **k: dataclasses.replace(o := original(*a, **k), loss=o.loss * float("nan"))
    )
    assert main(shapes_args(tmp_path, 6)) == 1
    err = capsys.readouterr().err
    assert "no checkpoint had been written yet" in err and "kept in" not in err


# -- 12. runs side by side -----------------------------------------------------------------------
def test_a_cpu_run_uses_one_thread_for_its_step_whatever_the_environment(tmp_path, capsys, monkeypatch):
    seen = []
    import fsd_gs.step as step_module

    original = step_module.DistillStep.prepare

    def spy(self):
        seen.append(torch.get_num_threads())
        return original(self)

    monkeypatch.setattr(step_module.DistillStep, "prepare", spy)
    torch.set_num_threads(2)
    try:
        assert main(shapes_args(tmp_path, 2)) == 0
        assert torch.get_num_threads() == 2  # restored after the step
    finally:
        torch.set_num_threads(1)
    assert seen == [1, 1]
    report = json.loads((last_line(capsys) / "report.json").read_text())
    assert "1 threads" in report["device"]


@pytest.mark.slow
def test_same_seed_same_asset_at_any_thread_count_end_to_end(straight, tmp_path):
    """The README's promise, as a user runs it: OMP_NUM_THREADS 2 and 4 give the 1-thread run's Gaussians."""
    for threads in ("2", "4"):
        out = tmp_path / threads
        proc = subprocess.run(
            [sys.executable, "-m", "fsd_gs.train", *shapes_args(out)],
            capture_output=True,
            text=True,
            env={**ENV, "OMP_NUM_THREADS": threads},
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        same_gaussians(straight, Path(proc.stdout.strip().splitlines()[-1]))


# -- exports at the end of a run --------------------------------------------------------------------
def test_output_formats_are_written_at_the_end_and_bad_names_refused(tmp_path, capsys):
    assert main(shapes_args(tmp_path / "a", 2, "--output.formats", "splat", "glb")) == 0
    run = last_line(capsys)
    assert (run / "model.splat").stat().st_size > 0 and (run / "model.glb").stat().st_size > 0
    assert main(shapes_args(tmp_path / "b", 2, "--output.formats", "gif")) == 2
    assert "gif" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_a_damaged_report_does_not_stop_a_resume(tmp_path, capsys):
    run = interrupted_run(tmp_path, capsys)
    (run / "report.json").write_text('{"completed": tr')
    assert main(["--resume", str(run), "--output.no-progress"]) == 0
    assert json.loads((run / "report.json").read_text())["completed"]
