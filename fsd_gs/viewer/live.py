"""The live viewer: watch the optimisation in the browser while it runs.

The trainer calls :meth:`LiveViewer.update` with a :class:`TrainingSnapshot` EVERY step. On most steps
that call only appends the loss to a queue and compares two numbers (about a microsecond). Every
``update_every`` steps (and at most once per ``min_interval_s``), and only when the background thread
is idle, it clones the few tensors it needs on their device (no host sync) and hands them over; the
background thread then copies them to the CPU, encodes images and sends splats or server renders.
While that thread is busy new snapshots are simply not taken (a stale one is never queued), so a slow
browser or a slow machine never makes training wait. The viewer thread never touches training state:
"save .ply now" only sets a flag that the trainer pops (:meth:`LiveViewer.pop_save_request`) and writes
itself, and "download .ply" is served from a copy taken on the trainer's thread.

Three parts, one module each: the trainer-to-viewer hand-over (:mod:`fsd_gs.viewer.handover`, no viser:
the snapshot, the one-slot payload, the control flags), the GUI panels (:mod:`fsd_gs.viewer.panels`: progress,
the loss curve, the last training render next to its noise, the world noise map; pause, save, download) and
the server-side renderer (:mod:`fsd_gs.viewer.server_render`, "render" mode). This module joins them: the
viewer thread takes each payload, publishes it to the panels and the scene, and renders for the browsers.

An exception anywhere in the viewer (a callback, the background thread, ``update`` itself) is logged
and the viewer carries on. Closing the page changes nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import torch

from fsd_gs.viewer.app import ERRORS, ViewerApp, ViewFrame, splat_arrays
from fsd_gs.viewer.config import ViewerConfig
from fsd_gs.viewer.handover import Handover, Payload, TrainingSnapshot
from fsd_gs.viewer.panels import NOISE_LABELS, LossCurve, Panels, format_duration
from fsd_gs.viewer.server_render import ServerRenderer, in_fresh_thread

__all__ = ["NOISE_LABELS", "LiveViewer", "LossCurve", "TrainingSnapshot", "format_duration", "in_fresh_thread"]


class LiveViewer:
    """The live training viewer (a viser app); see the module docstring.

    Args:
        config: the viewer options.
        total_steps: steps of the run (for the progress bar).
        noise_map: the world noise map [C,H_map,W_map] (its first 3 channels are shown normalised), or
            None for noise functions without one.
        noise_kind: the run's --noise.kind (worldmap, surface, random, constant): names the noise shown next to
            the training render.

    Attributes:
        url: where to open it (printed by the trainer).
        handover, panels, renderer: the three parts (see the module docstring).
        stats: counters: "updates" (calls), "sent" (snapshots handed to the thread; a waiting one may still be
            replaced), "handled" (taken by the thread), "published" (sent to the page without error),
            "skipped_busy" (due steps skipped because the thread was busy), "renders" (server renders),
            "publish_cpu_s" (CPU seconds the viewer thread spent publishing).
    """

    def __init__(
        self, config: ViewerConfig, total_steps: int, noise_map: Optional[torch.Tensor] = None, noise_kind: str = "worldmap"
    ) -> None:
        config.validate()
        self.config = config
        self.app = ViewerApp(
            config.host,
            config.port,
            config.background,
            label="fsd_gs live",
            frame=ViewFrame(distance=2.5, elevation=15.0, fov_deg=50.0),
        )
        self.url = self.app.url
        self.stats = {
            "updates": 0,
            "sent": 0,
            "handled": 0,
            "published": 0,
            "skipped_busy": 0,
            "renders": 0,
            "publish_cpu_s": 0.0,
        }
        self.handover = Handover(config, self.stats)
        self.panels = Panels(self.app, config, self.handover, total_steps, noise_map, noise_kind)
        self.renderer = ServerRenderer(self.app, config, self.handover, self.stats)
        self.app.on_client.append(self.renderer.client_connected)
        self.app.on_background.append(lambda color: self.renderer.mark_all_dirty())
        self._thread = threading.Thread(target=self._run, name="fsd-gs-viewer", daemon=True)
        self._thread.start()

    # -- the trainer's side ------------------------------------------------------------------------
    @property
    def mode(self) -> Optional[str]:
        """ "splats" or "render" once the first snapshot has arrived (None before)."""
        return self.handover.mode

    @property
    def paused(self) -> bool:
        """True while the user has paused training in the page (the trainer sleeps in a loop meanwhile)."""
        return self.handover.poll_paused()

    def pop_save_request(self) -> bool:
        """True once after the user clicked "Save .ply now" (the trainer then writes the .ply itself)."""
        return self.handover.pop_save_request()

    def update(self, snapshot: TrainingSnapshot) -> None:
        """Take the state after a step. Costs ~microseconds unless a send is due; never blocks, never raises."""
        if self.handover.closed:
            return
        try:
            self.handover.update(snapshot)
        except Exception:
            ERRORS.report("update")

    def close(self) -> None:
        """Stop the background thread and the server (training is unpaused)."""
        if self.handover.closed:
            return
        self.handover.close()
        self._thread.join(timeout=5.0)
        try:
            self.app.stop()
        except Exception:
            ERRORS.report("close")

    # -- the viewer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            running, payload = self.handover.take(self.renderer.due, self.renderer.wait)
            if not running:
                return
            try:
                if payload is not None:
                    cpu_start = time.thread_time()
                    self._publish(payload)
                    self.stats["published"] += 1
                    self.stats["publish_cpu_s"] += time.thread_time() - cpu_start
                if self.mode == "render":
                    self.renderer.render_dirty()
            except Exception:
                ERRORS.report("viewer thread")
            finally:
                if payload is not None:
                    self.stats["handled"] += 1
                self.handover.done()

    def _publish(self, p: Payload) -> None:
        if p.params is not None:
            self.renderer.current = p
            self.panels.publish(p)
            if self.mode == "splats":
                self.app.set_splats(splat_arrays(p.params, self.config.max_splats))
            else:
                self.app.set_count(p.num_gaussians)
                self.renderer.mark_all_dirty()
        if p.download is not None:
            self._send_download(p)

    def _send_download(self, p: Payload) -> None:
        assert p.download is not None
        content = in_fresh_thread(_ply_bytes, p.download, p.sh_degree, p.active_sh_degree)
        clients = self.app.server.get_clients()
        for client_id in p.download_clients:
            client = clients.get(client_id)
            if client is not None:
                client.send_file_download(f"fsd_gs_step_{p.step:06d}.ply", content, save_immediately=True)


def _ply_bytes(params: dict[str, torch.Tensor], sh_degree: int, active_sh_degree: int) -> bytes:
    """The INRIA-layout .ply of these parameters, as bytes."""
    from fsd_gs.gaussians import Gaussians
    from fsd_gs.io.ply import ply_bytes

    return ply_bytes(Gaussians({k: v.cpu() for k, v in params.items()}, sh_degree, active_sh_degree))
