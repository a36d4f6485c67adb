"""Server-side renders of the live viewer ("render" mode): each browser's camera rendered here, sent as an image.

A browser whose camera moved (or every browser, after new Gaussians or a new background) is marked dirty;
the viewer thread renders the dirty ones at most ``render_fps`` times a second each, in a short-lived thread
(:func:`in_fresh_thread`), and after three failures in a row falls back to in-browser splats.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

import torch

from fsd_gs.viewer.app import ERRORS, ViewerApp, cameras_from_viser, log, safe, splat_arrays, to_numpy
from fsd_gs.viewer.config import ViewerConfig
from fsd_gs.viewer.handover import Handover, Payload
from fsd_gs.viewer.images import to_uint8


class ServerRenderer:
    """The dirty browsers and their renders (see the module docstring).

    Args:
        app: the viser app (its clients and background).
        config: render_fps, render_max_side, max_splats.
        handover: its :attr:`~Handover.mode` (set to "splats" on the fallback) and the condition to notify.
        stats: the viewer's counters; this part counts "renders".

    Attributes:
        current: the last published payload, the one rendered (None before the first).
    """

    def __init__(self, app: ViewerApp, config: ViewerConfig, handover: Handover, stats: dict[str, Any]) -> None:
        self.app, self.config, self.handover, self.stats = app, config, handover, stats
        self.current: Optional[Payload] = None
        self._dirty_clients: set[int] = set()
        self._last_render: dict[int, float] = {}
        self._failures = 0

    def client_connected(self, client: Any) -> None:
        """Re-render for ``client`` whenever its camera moves (and now)."""
        client.camera.on_update(safe("camera update")(lambda camera: self.mark_dirty(client.client_id)))
        self.mark_dirty(client.client_id)

    def mark_dirty(self, client_id: int) -> None:
        if self.handover.mode != "render":
            return
        with self.handover.cond:
            self._dirty_clients.add(int(client_id))
            self.handover.cond.notify()

    def mark_all_dirty(self) -> None:
        for client_id in self.app.server.get_clients():
            self.mark_dirty(client_id)

    def due(self) -> bool:
        """True when some dirty browser's last render is older than one frame (called holding the condition)."""
        if self.handover.mode != "render" or not self._dirty_clients or self.current is None:
            return False
        now = time.perf_counter()
        period = 1.0 / self.config.render_fps
        return any(now - self._last_render.get(c, -math.inf) >= period for c in self._dirty_clients)

    def wait(self) -> Optional[float]:
        """How long the viewer thread may sleep: one frame while browsers are dirty, else until notified."""
        return 1.0 / self.config.render_fps if self._dirty_clients else None

    def render_dirty(self) -> None:
        """Render for every dirty browser that is due; three failures in a row switch to in-browser splats."""
        current = self.current
        if current is None or current.params is None:
            return
        now = time.perf_counter()
        period = 1.0 / self.config.render_fps
        clients = self.app.server.get_clients()
        with self.handover.cond:
            due = [c for c in self._dirty_clients if now - self._last_render.get(c, -math.inf) >= period]
            self._dirty_clients.difference_update(due)
        for client_id in due:
            client = clients.get(client_id)
            if client is None:
                continue
            self._last_render[client_id] = now
            try:
                in_fresh_thread(self.render_for, client, current)
                self.stats["renders"] += 1
            except Exception:
                ERRORS.report("server render")
                self._failures += 1
                if self._failures >= 3:
                    log.warning("viewer: server renders keep failing; switching to in-browser splats")
                    self.handover.mode = "splats"
                    self.app.set_splats(splat_arrays(current.params, self.config.max_splats))
                    return

    @torch.no_grad()
    def render_for(self, client: Any, p: Payload) -> None:
        """Render ``p``'s Gaussians from ``client``'s camera and set the image as its background."""
        from fsd_gs.gaussians import Gaussians
        from fsd_gs.render import render

        assert p.params is not None
        cam = client.camera
        try:
            wxyz, position, fov = cam.wxyz, cam.position, cam.fov
            width, height = cam.image_width, cam.image_height
        except AssertionError:  # no camera message from this browser yet
            self.mark_dirty(client.client_id)
            return
        device = p.params["means"].device
        cameras = cameras_from_viser(wxyz, position, fov, width, height, self.config.render_max_side, device)
        gaussians = Gaussians(dict(p.params), p.sh_degree, p.active_sh_degree)
        background = torch.tensor(self.app.background, dtype=torch.float32, device=device)
        out = render(gaussians, cameras, background)
        image = to_uint8(to_numpy(out.rgb[0]))
        client.scene.set_background_image(image, format="jpeg", jpeg_quality=85)


def in_fresh_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in a new thread, wait for it and return its result (or raise its exception).

    For the viewer's torch work (writing a .ply, server renders): an OpenMP team that torch creates for a
    thread lives as long as the thread, and a second live team slows the training thread's CPU kernels
    (see :func:`fsd_gs.viewer.app.to_numpy`); a short-lived thread takes its team with it.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="fsd-gs-viewer-torch", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")
