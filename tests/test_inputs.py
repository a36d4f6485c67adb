"""A newcomer's bad inputs (issue 29): each answer is one sentence and exit code 2 (or the right behaviour),
nothing is lost, and every write of a run turns an OS error into one sentence naming the file while the run
stays resumable. Kills at the first write: tests/test_robustness.py; the whole list: scripts/bad_inputs.py."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import fsd_gs.io.atomic as atomic
from fsd_gs.io.ply import read_ply
from fsd_gs.progress import Progress
from fsd_gs.train import main
from tests.test_robustness import ENV, shapes_args

ROOT = Path(__file__).resolve().parent.parent


def one_error(capsys) -> str:
    """The single stderr line of a refused command (and no traceback)."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def run_folders(out: Path) -> list[Path]:
    """The visible run folders under an --output-dir (hidden temporary folders are not runs)."""
    return [p for p in out.glob("*/*") if not p.name.startswith(".")]


def finished_run(out: Path, capsys, steps: int = 4) -> Path:
    assert main(shapes_args(out, steps)) == 0
    return Path(capsys.readouterr().out.strip().splitlines()[-1])


# -- item 1: numbers, files, help ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seed", "1000000000000000000000000000000"], "--seed must be a whole number from 0 to 4294967295"),
        (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295, got -1"),
        (["--gaussians.num-points", "2000000000"], "--gaussians.num-points must lie in 1..10,000,000"),
    ],
)
def test_seeds_and_sizes_out_of_range_are_one_sentence(extra, message, tmp_path, capsys):
    assert main(shapes_args(tmp_path, 2, *extra)) == 2
    assert message in one_error(capsys)
    assert not any(tmp_path.iterdir())


def test_gaussians_beyond_the_free_memory_are_refused(tmp_path, capsys, monkeypatch):
    import fsd_gs.resources as resources

    monkeypatch.setattr(resources, "available_memory", lambda device: 10 * 2**20)  # 10 MB free
    assert main(shapes_args(tmp_path, 2, "--gaussians.num-points", "1000000")) == 2
    err = one_error(capsys)
    assert "1,000,000 Gaussians need about" in err and "lower --gaussians.num-points" in err
    assert not any(tmp_path.iterdir())


def test_model_files_are_named_with_what_model_accepts(tmp_path, capsys):
    (tmp_path / "some.bin").write_bytes(b"not a checkpoint")
    (tmp_path / "FILE.dat").write_bytes(b"x")
    cases = {
        "some.bin": "the model file {} is not a .bin checkpoint",
        "FILE.dat": "--model {} is a file, not a model",
        "missing.pt": "the model file {} does not exist",
    }
    for name, message in cases.items():
        path = str(tmp_path / name)
        assert main(shapes_args(tmp_path / "out", 2, "--model", path)) == 2
        err = one_error(capsys)
        assert message.format(path) in err and "--model takes 'shapes'" in err
        assert "sd2-community" not in err  # never a model the user did not name
    assert not (tmp_path / "out").exists()


def test_a_binary_config_on_resume_is_one_sentence(tmp_path, capsys):
    run = finished_run(tmp_path, capsys, 2)
    (run / "config.yaml").write_bytes(bytes(range(256)) * 4)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["--resume", str(run), "--steps", "4"]) == 2
    assert "config.yaml is damaged (not text" in one_error(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_help_shows_each_example_on_its_own_line():
    out = subprocess.run(
        [sys.executable, "-m", "fsd_gs.train", "--help"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120
    ).stdout
    examples = [line for line in out.splitlines() if "python -m fsd_gs.train --" in line]
    assert len(examples) == 2 and all(line.count("python -m fsd_gs.train") == 1 for line in examples)
    assert "negative seeds are refused" in " ".join(out.split())


def test_more_threads_than_cores_warns_once(tmp_path, capsys):
    from fsd_gs.resources import usable_cores

    assert main(shapes_args(tmp_path, 1, "--threads", str(usable_cores() + 1))) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "CPU cores" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --threads")


# -- item 2: every write of a run: an OS error is one sentence naming the file, the run stays resumable ---
def _fail(monkeypatch, what: str) -> None:
    """Make the write of ``what`` (a file name, or "metrics"/"checkpoint"/"lock") raise OSError(ENOSPC)."""
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    mkstemp, mkdtemp, os_open = tempfile.mkstemp, tempfile.mkdtemp, os.open

    def fake_mkstemp(suffix=None, prefix=None, dir=None, text=False):
        if prefix is not None and prefix.startswith(f".{what}."):
            raise enospc
        return mkstemp(suffix, prefix, dir, text)

    def fake_mkdtemp(suffix=None, prefix=None, dir=None):
        if what == "checkpoint" and prefix is not None and prefix.startswith(".tmp-step_"):
            raise enospc
        return mkdtemp(suffix, prefix, dir)

    def fake_open(path, *args, **kwargs):
        if what == "lock" and str(path).endswith(".lock"):
            raise enospc
        return os_open(path, *args, **kwargs)

    def fake_append(path, text, encoding="utf-8"):
        raise atomic.WriteError(path, enospc)

    monkeypatch.setattr(tempfile, "mkstemp", fake_mkstemp)
    monkeypatch.setattr(tempfile, "mkdtemp", fake_mkdtemp)
    monkeypatch.setattr(os, "open", fake_open)
    if what == "metrics":
        import fsd_gs.run.hooks as hooks  # the metrics hook appends the lines

        monkeypatch.setattr(hooks, "append_text", fake_append)


WRITES = [
    "config.yaml",
    "metrics",
    "checkpoint",
    "step_000002.ply",
    "model.ply",
    "turntable.png",
    "turntable.mp4",
    "model.splat",
    "report.json",
    "lock",
]


@pytest.mark.parametrize("what", WRITES)
def test_a_full_disk_at_each_write_is_one_sentence_and_the_run_resumes(what, tmp_path, capsys, monkeypatch):
    if what == "turntable.mp4":
        pytest.importorskip("imageio_ffmpeg")
    extra = ["--output.snapshot-every", "2", "--output.formats", "splat"]
    with monkeypatch.context() as patch:
        _fail(patch, what)
        code = main(shapes_args(tmp_path, 4, *extra))
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "the disk is full" in err, err
    name = {"metrics": "metrics.jsonl", "checkpoint": "step_00000", "lock": ".lock"}.get(what, what)
    assert name in err, err
    runs = run_folders(tmp_path)
    if what in ("config.yaml", "lock") and not runs:
        return  # nothing was started: nothing to lose, and no half run folder either
    assert len(runs) == 1, runs
    assert "--resume" in err  # the sentence says how to continue
    assert main(["--resume", str(runs[0]), "--output.no-progress"]) == 0, capsys.readouterr().err
    report = json.loads((runs[0] / "report.json").read_text())
    assert report["completed"] and report["steps_done"] == 4
    assert len(read_ply(runs[0] / "model.ply")) > 0 and (runs[0] / "model.splat").stat().st_size > 0
    assert not list(runs[0].rglob(f"*{atomic.TEMP_SUFFIX}"))  # no temporary file left behind


def test_write_error_names_the_file_for_each_kind_of_os_error(tmp_path):
    for code, hint in [(errno.EACCES, "no permission"), (errno.EROFS, "read-only"), (errno.ENOSPC, "disk is full")]:
        message = str(atomic.WriteError(tmp_path / "x.ply", OSError(code, os.strerror(code))))
        assert message.startswith(f"cannot write {tmp_path / 'x.ply'}: {os.strerror(code)}") and hint in message


# -- item 3: a run folder appears whole ----------------------------------------------------------------
def test_a_new_run_folder_appears_with_its_config(tmp_path, capsys, monkeypatch):
    import fsd_gs.run.entry as runner  # open_run writes the config

    seen: list[tuple[Path, bool]] = []
    original = runner.write_config

    def spy(paths, cfg, log=None):
        seen.append((paths.root, paths.root.name.startswith(".")))
        return original(paths, cfg, log)

    monkeypatch.setattr(runner, "write_config", spy)
    run = finished_run(tmp_path, capsys, 2)
    assert seen[0][1] and seen[0][0].parent == run.parent  # written into a hidden sibling, then renamed
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".")]
    assert (run.stat().st_mode & 0o777) == (0o777 & ~atomic.UMASK)  # not mkdtemp's private 0700


def test_staging_folders_left_by_a_kill_are_cleaned_up_later(tmp_path):
    from fsd_gs.run_dir import STALE_STAGING_S, create_run_dir

    parent = tmp_path / "a-cat"
    stale, live = parent / ".20260101-000000-seed0.abcd.tmp", parent / ".20260101-000001-seed0.efgh.tmp"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / ".config.yaml.x.tmp").write_text("half")
    old = time.time() - STALE_STAGING_S - 10
    os.utime(stale, (old, old))
    paths = create_run_dir(tmp_path, "a cat", 0, fill=lambda f: (f / "config.yaml").write_text("x"))
    assert not stale.exists() and live.exists()  # a recent one may belong to a live process
    assert (paths.root / "config.yaml").read_text() == "x"


# -- item 4: unreadable checkpoints never silently replace a finished asset ------------------------------
def test_resume_with_every_checkpoint_unreadable_names_them_and_keeps_the_asset(tmp_path, capsys):
    run = finished_run(tmp_path, capsys, 4)
    folders = sorted((run / "checkpoints").iterdir())
    (folders[0] / "state.json").write_text("{broken")
    (folders[1] / "state.safetensors").write_bytes(b"\0" * 64)
    ply = (run / "model.ply").read_bytes()
    assert main(["--resume", str(run), "--steps", "6", "--output.no-progress"]) == 2
    err = one_error(capsys)
    assert folders[0].name in err and folders[1].name in err and "--from-scratch" in err
    assert "does not match its JSON" in err and "cannot be read" in err  # why, for each
    assert (run / "model.ply").read_bytes() == ply
    assert main(["--resume", str(run), "--steps", "6", "--from-scratch", "--output.no-progress"]) == 0
    assert json.loads((run / "report.json").read_text())["steps_done"] == 6
    assert "from_scratch" not in (run / "config.yaml").read_text()  # a one-off choice, not part of the run


# -- item 5: a complete run, progress after a resume, the lock ------------------------------------------
def test_resume_of_a_complete_run_is_quick_and_renders_nothing(tmp_path, capsys, monkeypatch):
    run = finished_run(tmp_path, capsys, 2)
    assert not (run / ".lock").exists()  # finished runs drop their lock
    stamps = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    import fsd_gs.run as runner  # python -m fsd_gs.train imports it from there when it runs

    monkeypatch.setattr(runner, "load_prior_for", lambda *a, **k: pytest.fail("a complete run loads no prior"))
    started = time.perf_counter()
    assert main(["--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert time.perf_counter() - started < 5
    assert "already complete" in out and "steps/s" not in out and out.strip().splitlines()[-1] == str(run)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == stamps


def test_progress_after_a_resume_counts_only_this_process(monkeypatch, capsys):
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    progress = Progress(total=60, initial=0, enabled=True)  # made at t = 0 (before the checkpoint is read)
    now[0] = 100.0
    progress.restart(40)  # resumed at step 40 at t = 100
    now[0] = 101.0
    progress.update(42, {})  # two steps in one second: 2 steps/s, not 42
    assert progress.rate == pytest.approx(2.0)
    assert "step 42/60 2.00 steps/s eta 9 s" in capsys.readouterr().out


def test_a_resumed_run_starts_its_progress_at_the_resumed_step(tmp_path, capsys, monkeypatch):
    import fsd_gs.run as runner

    assert main(shapes_args(tmp_path, 2)) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    seen = []
    original = runner.Run.restore

    def spy(self):
        step = original(self)
        seen.append((step, self.progress.s0))
        return step

    monkeypatch.setattr(runner.Run, "restore", spy)
    assert main(["--resume", str(run), "--steps", "4", "--output.no-progress"]) == 0
    assert seen == [(2, 2)]


# -- item 6: no video encoder is one line --------------------------------------------------------------
def test_no_video_encoder_line(tmp_path, capsys, monkeypatch):
    import imageio.v3 as iio

    from fsd_gs.errors import warnings_as_lines
    from fsd_gs.turntable import save_turntable

    original = iio.imwrite
    monkeypatch.setattr(
        iio,
        "imwrite",
        lambda uri, image, *a, extension=None, **k: (
            (_ for _ in ()).throw(ImportError("no ffmpeg"))
            if extension == ".mp4"
            else original(uri, image, *a, extension=extension, **k)
        ),
    )
    with warnings_as_lines():
        written = save_turntable(torch.randint(0, 255, (2, 8, 8, 3), dtype=torch.uint8), tmp_path / "t.png", tmp_path / "t.mp4")
    assert written == [tmp_path / "t.png"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t.mp4 not written" in err[0] and "pip install imageio-ffmpeg" in err[0]


def test_no_encoder_installed_is_one_line_and_no_pillow_fallback(tmp_path, capsys, monkeypatch):
    """Without PyAV and imageio-ffmpeg, imageio would try Pillow for the MP4, fail, and print a traceback when the
    plugin is collected (seen on the GPU machine): the encoder is looked for first, and the MP4 is not attempted."""
    import importlib.util

    import imageio.v3 as iio

    from fsd_gs.errors import warnings_as_lines
    from fsd_gs.turntable import save_turntable

    find_spec, original = importlib.util.find_spec, iio.imwrite
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("av", "imageio_ffmpeg") else find_spec(name, *a)
    )
    calls = []
    monkeypatch.setattr(
        iio,
        "imwrite",
        lambda uri, image, *a, extension=None, **k: calls.append(extension) or original(uri, image, *a, extension=extension, **k),
    )
    with warnings_as_lines():
        written = save_turntable(torch.randint(0, 255, (2, 8, 8, 3), dtype=torch.uint8), tmp_path / "t.png", tmp_path / "t.mp4")
    assert written == [tmp_path / "t.png"] and calls == [".png"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "t.mp4 not written" in err[0]


# -- item 7: the newcomer's list as a script ---------------------------------------------------------------
@pytest.mark.slow
def test_bad_inputs_script_quick_subset_answers_every_case_well():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bad_inputs.py"), "--quick"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "| case |" not in line]
    assert len(rows) >= 4 and all(line.endswith("| yes |") for line in rows), rows
