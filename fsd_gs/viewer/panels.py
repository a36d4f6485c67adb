"""The live viewer's GUI panels: progress, the loss curve, the last training view with its noise, the world map.

Panels: progress (step / total, it/s, ETA), the loss curve, the current t, the Gaussian count, the last
training render next to its noise, and the world noise map with the current camera's window outlined.
Controls: pause / resume, save a .ply now, download the current .ply (they only set flags of the
:class:`~fsd_gs.viewer.handover.Handover`), plus the shared scene controls of :class:`~fsd_gs.viewer.app.ViewerApp`.
:meth:`Panels.publish` runs on the viewer thread.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from fsd_gs.viewer.app import ViewerApp, log, safe, to_numpy
from fsd_gs.viewer.config import ViewerConfig
from fsd_gs.viewer.handover import Handover, Payload, as_float
from fsd_gs.viewer.images import channel_stats, noise_to_rgb, outline_window, resize_to_height, side_by_side, to_uint8

NOISE_LABELS = {
    "worldmap": "Training render | its FSD noise window (cut from the world map below)",
    "surface": "Training render | its surface-attached noise (the same surface point, the same noise, from every camera)",
    "random": "Training render | its noise (fresh every step)",
    "constant": "Training render | its noise (one fixed image for every camera)",
}
"""Label of the "Last training view" panel image for each --noise.kind."""


class LossCurve:
    """At most ``max_points`` points covering the whole run: each point is the mean loss of ``stride``
    consecutive steps; when full, neighbouring points are merged and the stride doubles."""

    def __init__(self, max_points: int) -> None:
        self.max_points = max(10, max_points)
        self.steps: list[float] = []
        self.values: list[float] = []
        self.stride = 1
        self._sum, self._count = 0.0, 0

    def add(self, step: int, value: float) -> None:
        if not math.isfinite(value):
            return
        self._sum += value
        self._count += 1
        if self._count >= self.stride:
            self.steps.append(float(step))
            self.values.append(self._sum / self._count)
            self._sum, self._count = 0.0, 0
            if len(self.steps) > self.max_points:
                n = len(self.steps) // 2 * 2
                self.steps = self.steps[1:n:2] + self.steps[n:]
                self.values = [0.5 * (a + b) for a, b in zip(self.values[0:n:2], self.values[1:n:2])] + self.values[n:]
                self.stride *= 2

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.steps, dtype=np.float64), np.asarray(self.values, dtype=np.float64)


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1:02:05"``; ``65`` -> ``"1:05"``; unknown -> ``"-"``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class NoiseMapImage:
    """The world noise map [C,H_map,W_map] as an image (first 3 channels, normalised), and its channel statistics."""

    def __init__(self, noise_map: Optional[torch.Tensor], height: int) -> None:
        self.rgb: Optional[np.ndarray] = None
        self.shape: Optional[tuple[int, int]] = None
        self.stats = None
        if noise_map is None:
            return
        data = noise_map.detach().float().cpu().numpy()
        if data.ndim == 4 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 3:
            log.warning("viewer: the world noise map has shape %s, expected [C,H,W]; not shown", tuple(data.shape))
            return
        self.stats = channel_stats(data)
        self.shape = (int(data.shape[1]), int(data.shape[2]))
        self.rgb = resize_to_height(noise_to_rgb(data, self.stats), height, nearest=True)


class Panels:
    """The GUI of the live viewer (see the module docstring), built once in the app's GUI.

    Args:
        app: the viser app.
        config: the viewer options.
        handover: whose flags the controls set (and whose pause state the progress text shows).
        total_steps: steps of the run.
        noise_map: the world noise map, or None.
        noise_kind: the run's --noise.kind, naming the noise next to the training render.
    """

    def __init__(
        self,
        app: ViewerApp,
        config: ViewerConfig,
        handover: Handover,
        total_steps: int,
        noise_map: Optional[torch.Tensor],
        noise_kind: str,
    ) -> None:
        self.app, self.config, self.handover, self.total_steps = app, config, handover, int(total_steps)
        self.noise_label = NOISE_LABELS.get(noise_kind, f"Training render | its noise ({noise_kind})")
        self.noise_map = NoiseMapImage(noise_map, config.panel_image_height)
        self.curve = LossCurve(config.loss_points)
        self.current: Optional[Payload] = None  # the last published payload (its progress line)
        self._build()

    def _build(self) -> None:
        gui = self.app.server.gui
        placeholder = np.full((self.config.panel_image_height, self.config.panel_image_height, 3), 235, np.uint8)
        with gui.add_folder("Training progress"):
            self.progress_bar = gui.add_progress_bar(0.0)
            self.progress_md = gui.add_markdown(self.progress_text(None))
            self.loss_plot = gui.add_uplot(
                data=(np.zeros(0), np.zeros(0)),
                series=({"label": "step"}, {"label": "loss", "stroke": "#d9480f", "width": 1.5}),
                scales={"x": {"time": False, "auto": True}, "y": {"auto": True}},
                axes=({}, {"size": 64}),
                title="Loss",
                aspect=2.0,
            )
            self.pause_button = gui.add_button("Pause", hint="Pause / resume training")
            self.save_button = gui.add_button("Save .ply now", hint="The trainer writes saved_step_N.ply into the run folder")
            self.download_button = gui.add_button("Download .ply", hint="Download the current Gaussians to this browser")
        with gui.add_folder("Last training view"):
            self.train_image = gui.add_image(placeholder, label=self.noise_label, format="jpeg")
        self.map_image = None
        if self.noise_map.rgb is not None:
            with gui.add_folder("World noise map"):
                self.map_image = gui.add_image(self.noise_map.rgb, label="World noise map, current window outlined", format="png")
        with gui.add_folder("View"):
            self.app.add_scene_controls()
        self.pause_button.on_click(safe("pause button")(self._on_pause))
        self.save_button.on_click(safe("save button")(self._on_save))
        self.download_button.on_click(safe("download button")(self._on_download))

    # -- controls -------------------------------------------------------------------------------
    def _on_pause(self, event: Any) -> None:
        paused = self.handover.toggle_pause()
        self.pause_button.label = "Resume" if paused else "Pause"
        self.pause_button.color = "green" if paused else None
        self.progress_md.content = self.progress_text(self.current)

    def _on_save(self, event: Any) -> None:
        self.handover.request_save()
        client = getattr(event, "client", None)
        if client is not None:
            client.add_notification(
                "Saving",
                "The trainer writes saved_step_XXXXXX.ply into the run folder after the current step.",
                auto_close_seconds=4.0,
            )

    def _on_download(self, event: Any) -> None:
        client_id = getattr(event, "client_id", None)
        if client_id is not None:
            self.handover.request_download(int(client_id))

    # -- what they show (viewer thread) -----------------------------------------------------------
    def progress_text(self, p: Optional[Payload]) -> str:
        state = " · **paused**" if self.handover.paused else ""
        if p is None:
            return f"**Step** 0 / {self.total_steps:,}{state}  \n**t** - · **Gaussians** -"
        pct = 100.0 * p.step / max(1, p.total_steps)
        speed = f"{p.it_per_s:.2f} it/s" if p.it_per_s and math.isfinite(p.it_per_s) else "- it/s"
        return (
            f"**Step** {p.step:,} / {p.total_steps:,} ({pct:.0f}%) · {speed} · **ETA** {format_duration(p.eta_s)}"
            f"{state}  \n**t** {int(as_float(p.timestep))} · **Gaussians** {p.num_gaussians:,}"
        )

    def publish(self, p: Payload) -> None:
        """Show payload ``p``: the losses of every step since the last call, progress, images."""
        self.current = p
        losses = self.handover.losses
        while losses:
            step, loss = losses.popleft()
            self.curve.add(int(step), as_float(loss))
        self.loss_plot.data = self.curve.arrays()
        self.progress_bar.value = float(min(100.0, 100.0 * p.step / max(1, p.total_steps)))
        self.progress_md.content = self.progress_text(p)
        height = self.config.panel_image_height
        parts = []
        if p.train_rgb is not None:
            parts.append(resize_to_height(to_uint8(to_numpy(p.train_rgb)), height))
        if p.noise_window is not None and p.noise_window.ndim == 3:
            window = noise_to_rgb(to_numpy(p.noise_window), self.noise_map.stats)
            parts.append(resize_to_height(window, height, nearest=True))
        if parts:
            self.train_image.image = parts[0] if len(parts) == 1 else side_by_side(parts[0], parts[1])
        nm = self.noise_map
        if self.map_image is not None and nm.rgb is not None and nm.shape is not None:
            if p.window_origin is not None and p.window_size is not None:
                self.map_image.image = outline_window(nm.rgb, p.window_origin, p.window_size, nm.shape)
