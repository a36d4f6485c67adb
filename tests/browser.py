"""Headless Chromium for the viewer's browser tests, driven over the DevTools protocol (no chromedriver).

Chromium runs with a fresh --user-data-dir and HOME in a temporary folder, software WebGL
(SwiftShader) and every background service off, so a test leaves nothing behind and needs no GPU,
display or network. We talk to it through its DevTools websocket on 127.0.0.1 (the `websockets`
package comes with viser): open a page, wait until its text shows what we expect, read the text,
take a PNG screenshot. ``scripts/test.sh`` installs Debian's ``chromium``; without it the tests are skipped
(:data:`SKIP_REASON`), and fail under CI=true or scripts/test.sh (tests/tool_skips.py).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--enable-unsafe-swiftshader",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
SKIP_REASON = "no Chromium browser found (install Debian's `chromium`, as scripts/test.sh does, or set FSD_GS_CHROMIUM)"


def find_chromium() -> Optional[str]:
    """Path of a Chromium binary ($FSD_GS_CHROMIUM, else the usual names on PATH), or None."""
    explicit = os.environ.get("FSD_GS_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else shutil.which(explicit)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class HeadlessChromium:
    """One headless Chromium with one page; use as a context manager.

    Example::

        with HeadlessChromium(1280, 800) as browser:
            browser.open(url)
            browser.wait_for_text(["Loss"], timeout=30)
            image = browser.screenshot(path)   # [H,W,3] uint8
    """

    def __init__(self, width: int = 1280, height: int = 800, start_timeout: float = 30.0) -> None:
        self.width, self.height = width, height
        self.start_timeout = start_timeout
        self._ids = itertools.count(1)
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self._proc: Optional[subprocess.Popen] = None
        self._ws: Any = None

    # -- lifetime ----------------------------------------------------------------------------------
    def __enter__(self) -> HeadlessChromium:
        binary = find_chromium()
        if binary is None:
            raise RuntimeError(SKIP_REASON)
        self._tmp = tempfile.TemporaryDirectory(prefix="fsd_gs_chromium_")
        root = Path(self._tmp.name)
        home, profile = root / "home", root / "profile"
        home.mkdir()
        env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache")}
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", f"--window-size={self.width},{self.height}", "about:blank"]
        self._proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self._connect(profile / "DevToolsActivePort")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
            self._ws = None
        if self._proc is not None:  # chromium and its helpers share the process group we started it in
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self._proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self._proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _connect(self, port_file: Path) -> None:
        from websockets.sync.client import connect

        deadline = time.monotonic() + self.start_timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited at start-up (code {self._proc.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port in time")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.loads(response.read())
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)

    # -- protocol ----------------------------------------------------------------------------------
    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict:
        """Send one DevTools command and return its result (events in between are ignored)."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            raw = self._ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            reply = json.loads(raw)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    # -- what the tests use ------------------------------------------------------------------------
    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        """The page's visible text (document.body.innerText)."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, needles: Iterable[str], timeout: float = 60.0) -> str:
        """Wait until every string of ``needles`` is in the page's text; return the text."""
        needles = list(needles)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.25)
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"the page never showed {missing}; its text was: {text[:2000]!r}")

    def click_button(self, label: str) -> bool:
        """Click the page's button whose text is ``label``; False if there is none."""
        return bool(
            self.evaluate(
                "(() => { const b = [...document.querySelectorAll('button')].find(x => x.innerText.trim() === "
                + json.dumps(label)
                + "); if (b) { b.click(); } return !!b; })()"
            )
        )

    def dismiss_notifications(self) -> int:
        """Close the page's pop-up notifications (e.g. viser's "software WebGL" notice); returns how many."""
        return int(
            self.evaluate(
                "(() => { const b = [...document.querySelectorAll('.mantine-Notification-closeButton')];"
                " b.forEach(x => x.click()); return b.length; })()"
            )
            or 0
        )

    def screenshot(self, path: Optional[Path] = None) -> np.ndarray:
        """A PNG screenshot of the viewport, saved to ``path`` if given; returns [H,W,3] uint8."""
        from PIL import Image

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def differs_from(image: np.ndarray, color: tuple[int, int, int], tolerance: int = 40) -> np.ndarray:
    """Mask [H,W] of pixels whose colour differs from ``color`` by more than ``tolerance`` in some channel."""
    return (np.abs(image.astype(np.int16) - np.asarray(color, dtype=np.int16)).max(axis=-1)) > tolerance


def fraction_in_box(mask: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> float:
    """Fraction of True pixels of ``mask`` in the box [x0,x1) x [y0,y1)."""
    return float(mask[y0:y1, x0:x1].mean())


def wait_for_splats(
    browser: HeadlessChromium,
    object_box: tuple[int, int, int, int],
    empty_box: tuple[int, int, int, int],
    background: tuple[int, int, int],
    drawn: float = 0.9,
    empty: float = 0.05,
    timeout: float = 60.0,
) -> np.ndarray:
    """Take screenshots until at least ``drawn`` of ``object_box`` differs from ``background`` and at most ``empty``
    of ``empty_box`` does (viser fades the view in: both must hold); return the last screenshot."""
    deadline = time.monotonic() + timeout
    while True:
        image = browser.screenshot()
        mask = differs_from(image, background)
        if fraction_in_box(mask, *object_box) >= drawn and fraction_in_box(mask, *empty_box) <= empty:
            return image
        if time.monotonic() > deadline:
            return image
        time.sleep(0.5)
