"""The viewer in a real browser: headless Chromium (software WebGL) loads the live viewer of a short
training run and the standalone viewer of a written .ply, and we check the screenshots.

"The splats are drawn" means: in the box where the object projects (the middle of the 3D view: both
viewers look at the object's centre) most pixels differ from the background colour, while a box of
empty space beside it keeps the background colour. "The panels are there" means their labels are in
the page's text and their images have loaded.

Skipped, with the reason, when no Chromium is installed (scripts/test.sh installs Debian's; there and under CI=true
the skip fails, tests/tool_skips.py). Set
FSD_GS_UPDATE_DOCS=1 to copy the screenshots to docs/viewer-live.png and docs/viewer-standalone.png.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.browser import SKIP_REASON, HeadlessChromium, differs_from, find_chromium, fraction_in_box, wait_for_splats

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1100, 950
pytestmark = [pytest.mark.browser, pytest.mark.skipif(find_chromium() is None, reason=SKIP_REASON)]


def _object_box(half: int = 70) -> tuple[int, int, int, int]:
    """A box around the middle of the 3D view, where the object at the origin projects."""
    cx, cy = WIDTH // 2, HEIGHT // 2
    return cx - half, cy - half, cx + half, cy + half


EMPTY_BOX = (20, 330, 150, 620)
"""Left of the object, below the notification area and above viser's logo: empty space."""


def _keep_for_docs(shot: Path, name: str) -> None:
    if os.environ.get("FSD_GS_UPDATE_DOCS") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / name)


class _Process:
    """A child process whose stdout lines are collected in a thread (so its pipe never fills up)."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_url(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(r"viewer: (http://\S+)", line)
                if match:
                    return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError("no viewer URL printed; output:\n" + "\n".join(self.lines[-40:]))

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.proc.returncode


def _step(text: str) -> int:
    """The step the live viewer's progress panel shows."""
    match = re.search(r"Step ([\d,]+) / ", text)
    assert match, text[-1500:]
    return int(match.group(1).replace(",", ""))


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "FSD_GS_FORCE_VIEWER": "1",
    }


@pytest.mark.slow
def test_live_viewer_of_a_training_run(tiny_sd_dir, tmp_path):
    """A real run (tiny random-weight SD pipeline, CPU) with the live viewer on; Ctrl-C ends it."""
    cmd = [
        sys.executable,
        "-m",
        "fsd_gs.train",
        "--prompt",
        "a red mushroom",
        "--model",
        str(tiny_sd_dir),
        "--steps",
        "5000",
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path / "runs"),
        "--viewer.port",
        "0",
        "--camera.width",
        "64",
        "--camera.height",
        "64",
        "--gaussians.num-points",
        "2000",
        "--gaussians.init-opacity",
        "0.6",
        "--guidance.guidance-scale",
        "7.5",
        "--optim.background",
        "white",
        "--output.no-progress",
        "--output.checkpoint-every",
        "0",
        "--output.snapshot-every",
        "0",
    ]
    run = _Process(cmd, _env())
    try:
        url = run.wait_for_url()
        assert url.startswith("http://127.0.0.1:")
        with HeadlessChromium(WIDTH, HEIGHT) as browser:
            browser.open(url)
            labels = [
                "Training progress",
                "Loss",
                "Pause",
                "Save .ply now",
                "Download .ply",
                "Last training view",
                "Training render | its FSD noise window",
                "World noise map",
                "Gaussians",
                "Background",
                "Reset view",
            ]
            text = browser.wait_for_text(labels, timeout=90)
            deadline = time.monotonic() + 90
            while not re.search(r"Step [1-9][\d,]* / 5,000", text) and time.monotonic() < deadline:
                time.sleep(0.5)
                text = browser.text()
            assert re.search(r"Step [1-9][\d,]* / 5,000", text), text[-1500:]
            assert re.search(r"t \d+ · Gaussians [\d,]+", text) and "it/s" in text and "ETA" in text
            # Pause: the step stops; Resume: it goes on. Save .ply now: the trainer writes the file.
            assert browser.click_button("Pause")
            text = browser.wait_for_text(["paused", "Resume"], timeout=30)
            time.sleep(1.5)
            paused_at = _step(browser.text())
            time.sleep(2.0)
            assert _step(browser.text()) == paused_at, "training went on while paused"
            assert browser.click_button("Resume") and browser.click_button("Save .ply now")
            deadline = time.monotonic() + 60
            while _step(browser.text()) <= paused_at and time.monotonic() < deadline:
                time.sleep(0.3)
            assert _step(browser.text()) > paused_at, "training did not resume"
            while not list((tmp_path / "runs").rglob("saved_step_*.ply")) and time.monotonic() < deadline:
                time.sleep(0.3)
            assert list((tmp_path / "runs").rglob("saved_step_*.ply")), "Save .ply now wrote nothing"
            browser.dismiss_notifications()
            wait_for_splats(browser, _object_box(), EMPTY_BOX, (255, 255, 255), timeout=90)
            loaded = browser.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 8).length")
            shot = tmp_path / "viewer-live.png"
            image = browser.screenshot(shot)
            seen = _step(browser.text())
        time.sleep(3.0)  # the page is closed now: training must simply go on
    finally:
        code = run.stop()
    drawn = differs_from(image, (255, 255, 255))
    assert fraction_in_box(drawn, *_object_box()) >= 0.9, "the splats are not drawn where the object is"
    assert fraction_in_box(drawn, *EMPTY_BOX) <= 0.05, "the empty space beside the object is not background"
    assert loaded >= 2, "the training-view and world-noise-map images did not load"
    assert code == 130, "\n".join(run.lines[-30:])  # Ctrl-C: saved and stopped
    stopped = [int(m.group(1)) for line in run.lines if (m := re.search(r"stopped at step (\d+)", line))]
    assert stopped and stopped[0] > seen, "training did not go on after the page was closed"
    _keep_for_docs(shot, "viewer-live.png")


def write_inria_ply(path: Path, n: int = 6000, seed: int = 0) -> None:
    """A sphere shell coloured by its normals, written the way other 3DGS tools write .ply files:
    INRIA layout, SH degree 3 (45 f_rest values), normals, float32, no fsd_gs header comment."""
    from plyfile import PlyData, PlyElement

    rng = np.random.default_rng(seed)
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    points = 0.5 * normals
    names = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(45)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    data = np.zeros(n, dtype=[(name, "<f4") for name in names])
    for i, axis in enumerate("xyz"):
        data[axis] = points[:, i]
        data[f"n{axis}"] = normals[:, i]
        data[f"f_dc_{i}"] = (0.5 * normals[:, i]) / 0.28209479177387814  # colour 0.5 + 0.5 n
        data[f"scale_{i}"] = np.log(0.03)
    for i in range(45):
        data[f"f_rest_{i}"] = rng.normal(0.0, 0.02, n)
    data["opacity"] = 4.0
    data["rot_0"] = 1.0
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))


@pytest.mark.slow
def test_standalone_viewer_of_a_written_ply(tmp_path):
    """`python -m viewer PATH.ply --background ...` on a .ply written the way other tools write them."""
    ply = tmp_path / "sphere.ply"
    write_inria_ply(ply)
    background = (0.08, 0.09, 0.12)
    bg255 = tuple(round(255 * c) for c in background)
    cmd = [sys.executable, "-m", "viewer", str(ply), "--port", "0", "--background", *map(str, background)]
    viewer = _Process(cmd, _env())
    try:
        url = viewer.wait_for_url(timeout=60)
        assert url.startswith("http://127.0.0.1:")
        with HeadlessChromium(WIDTH, HEIGHT) as browser:
            browser.open(url)
            browser.wait_for_text(["sphere.ply", "Gaussians: 6,000", "Background", "Reset view"], timeout=90)
            browser.dismiss_notifications()
            wait_for_splats(browser, _object_box(), EMPTY_BOX, bg255, timeout=90)
            shot = tmp_path / "viewer-standalone.png"
            image = browser.screenshot(shot)
    finally:
        viewer.stop()
    drawn = differs_from(image, bg255)
    assert fraction_in_box(drawn, *_object_box()) >= 0.9, "the splats are not drawn where the object is"
    assert fraction_in_box(drawn, *EMPTY_BOX) <= 0.05, "the --background colour is not behind the object"
    _keep_for_docs(shot, "viewer-standalone.png")
