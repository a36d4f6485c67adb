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

Panels: progress (step / total, it/s, ETA), the loss curve, the current t, the Gaussian count, the last
training render next to its FSD noise window, and the world noise map with the current camera's
window outlined. Controls: pause / resume, save a .ply now, download the current .ply, plus the shared
scene controls of :class:`fsd_gs.viewer.app.ViewerApp` (background colour, reset view).

An exception anywhere in the viewer (a callback, the background thread, ``update`` itself) is logged
and the viewer carries on. Closing the page changes nothing.
"""

from __future__ import annotations

import collections
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from fsd_gs.viewer.app import ERRORS, ViewerApp, ViewFrame, cameras_from_viser, log, safe, splat_arrays, to_numpy
from fsd_gs.viewer.config import ViewerConfig, resolve_mode
from fsd_gs.viewer.images import channel_stats, noise_to_rgb, outline_window, resize_to_height, side_by_side, to_uint8

Number = Union[float, int, torch.Tensor]
SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0")
LOSS_QUEUE_LIMIT = 100_000


@dataclass
class TrainingSnapshot:
    """What the trainer shows the viewer after a step. Tensors may live on any device; nothing is copied
    unless the viewer decides to send this step.

    Attributes:
        step: steps done so far (1 after the first step).
        total_steps: steps of the whole run.
        loss: the step's loss, a float or a 0-d tensor (converted only when sent, so the trainer pays no sync).
        timestep: the diffusion timestep t of the step, an int or a 0-d tensor.
        num_gaussians: current number of Gaussians.
        it_per_s: training speed in steps per second (0 or NaN when unknown).
        eta_s: seconds left (NaN when unknown).
        gaussians: the live :class:`fsd_gs.gaussians.Gaussians` (read on the trainer's thread only).
        train_rgb: the last training render [H,W,3] in [0,1], detached, or None.
        noise_window: the noise of that render [C,h,w] (model space, e.g. 4x64x64 latents), or None.
        window_origin: (row0, col0) of that window on the world noise map, or None.
        window_size: (h, w) of that window, or None.
    """

    step: int
    total_steps: int
    loss: Number
    timestep: Number
    num_gaussians: int
    it_per_s: float
    eta_s: float
    gaussians: Any
    train_rgb: Optional[torch.Tensor] = None
    noise_window: Optional[torch.Tensor] = None
    window_origin: Optional[tuple[int, int]] = None
    window_size: Optional[tuple[int, int]] = None


@dataclass
class _Payload:
    """A snapshot's data copied on the trainer's thread, for the viewer thread."""

    step: int
    total_steps: int
    timestep: Number
    num_gaussians: int
    it_per_s: float
    eta_s: float
    params: Optional[dict[str, torch.Tensor]] = None
    sh_degree: int = 0
    active_sh_degree: int = 0
    train_rgb: Optional[torch.Tensor] = None
    noise_window: Optional[torch.Tensor] = None
    window_origin: Optional[tuple[int, int]] = None
    window_size: Optional[tuple[int, int]] = None
    download: Optional[dict[str, torch.Tensor]] = None
    download_clients: list[int] = field(default_factory=list)


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


def _as_float(value: Number) -> float:
    return float(value.detach().reshape(-1)[0]) if isinstance(value, torch.Tensor) else float(value)


NOISE_LABELS = {
    "worldmap": "Training render | its FSD noise window (cut from the world map below)",
    "surface": "Training render | its surface-attached noise (the same surface point, the same noise, from every camera)",
    "random": "Training render | its noise (fresh every step)",
    "constant": "Training render | its noise (one fixed image for every camera)",
}
"""Label of the "Last training view" panel image for each --noise.kind."""


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
        mode: "splats" or "render" once the first snapshot has arrived (None before).
        stats: counters: "updates" (calls), "sent" (snapshots handed to the thread; a waiting one may still be
            replaced), "handled" (taken by the thread), "published" (sent to the page without error),
            "skipped_busy" (due steps skipped because the thread was busy), "renders" (server renders),
            "publish_cpu_s" (CPU seconds the viewer thread spent publishing).
    """

    def __init__(self, config: ViewerConfig, total_steps: int, noise_map: Optional[torch.Tensor] = None,
                 noise_kind: str = "worldmap") -> None:
        config.validate()
        self.noise_label = NOISE_LABELS.get(noise_kind, f"Training render | its noise ({noise_kind})")
        self.config = config
        self.total_steps = int(total_steps)
        self.app = ViewerApp(config.host, config.port, config.background, label="fsd_gs live",
                             frame=ViewFrame(distance=2.5, elevation=15.0, fov_deg=50.0))
        self.url = self.app.url
        self.mode: Optional[str] = None
        self.stats = {"updates": 0, "sent": 0, "handled": 0, "published": 0, "skipped_busy": 0, "renders": 0,
                      "publish_cpu_s": 0.0}

        # Trainer-thread state (update() and the properties).
        self._sent_step = -(10**9)
        self._sent_time = -math.inf
        self._losses: collections.deque = collections.deque(maxlen=LOSS_QUEUE_LIMIT)
        self._last_snapshot: Optional[TrainingSnapshot] = None
        self._rate: Optional[float] = None
        # Shared state (flags set by the page's callbacks; small, lock-protected where it matters).
        self._paused = False
        self._save_requested = False
        self._download_clients: set[int] = set()
        self._flag_lock = threading.Lock()
        # Viewer-thread state.
        self._cond = threading.Condition()
        self._slot: Optional[_Payload] = None
        self._busy = False
        self._closed = False
        self._curve = LossCurve(config.loss_points)
        self._current: Optional[_Payload] = None  # the last published parameters (render mode renders them)
        self._dirty_clients: set[int] = set()
        self._last_render: dict[int, float] = {}
        self._render_failures = 0

        self._noise_map_rgb: Optional[np.ndarray] = None
        self._noise_map_shape: Optional[tuple[int, int]] = None
        self._noise_stats = None
        if noise_map is not None:
            self._set_noise_map(noise_map)
        self._build_gui()
        self.app.on_client.append(self._client_connected)
        self.app.on_background.append(lambda color: self._mark_all_dirty())
        self._thread = threading.Thread(target=self._run, name="fsd-gs-viewer", daemon=True)
        self._thread.start()

    # -- the trainer's side ------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        """True while the user has paused training in the page (the trainer sleeps in a loop meanwhile)."""
        if self._paused and self._last_snapshot is not None:
            self._catch_up_while_paused()
        return self._paused

    def pop_save_request(self) -> bool:
        """True once after the user clicked "Save .ply now" (the trainer then writes the .ply itself)."""
        if not self._save_requested:
            return False
        with self._flag_lock:
            requested, self._save_requested = self._save_requested, False
        return requested

    def update(self, snapshot: TrainingSnapshot) -> None:
        """Take the state after a step. Costs ~microseconds unless a send is due; never blocks, never raises."""
        if self._closed:
            return
        try:
            self.stats["updates"] += 1
            self._losses.append((snapshot.step, snapshot.loss))
            self._last_snapshot = snapshot
            final = snapshot.step >= snapshot.total_steps
            download = bool(self._download_clients)
            if not (final or download):
                if snapshot.step - self._sent_step < self.config.update_every:
                    return
                if time.perf_counter() - self._sent_time < self.config.min_interval_s:
                    return
                if self._busy or self._slot is not None:
                    self.stats["skipped_busy"] += 1
                    return
            self._hand_over(self._capture(snapshot, download))
        except Exception:
            ERRORS.report("update")

    def close(self) -> None:
        """Stop the background thread and the server (training is unpaused)."""
        if self._closed:
            return
        self._closed = True
        self._paused = False
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        try:
            self.app.stop()
        except Exception:
            ERRORS.report("close")

    # -- copying on the trainer's thread -----------------------------------------------------------
    @torch.no_grad()
    def _capture(self, snap: TrainingSnapshot, download: bool) -> _Payload:
        gaussians = snap.gaussians
        if self.mode is None:
            self.mode = resolve_mode(self.config.mode, gaussians.device.type)
        keys = SPLAT_KEYS + (("shN",) if self.mode == "render" else ())
        now = time.perf_counter()
        rate, eta = _finite(snap.it_per_s), _finite(snap.eta_s)
        if rate is None or rate <= 0:  # the trainer has no estimate (e.g. no progress bar): use ours
            if math.isfinite(self._sent_time) and snap.step > self._sent_step:
                measured = (snap.step - self._sent_step) / max(1e-9, now - self._sent_time)
                self._rate = measured if self._rate is None else 0.7 * self._rate + 0.3 * measured
            rate = self._rate or 0.0
        if eta is None and rate > 0:
            eta = (snap.total_steps - snap.step) / rate
        payload = _Payload(
            step=int(snap.step), total_steps=int(snap.total_steps), timestep=_detach(snap.timestep),
            num_gaussians=int(snap.num_gaussians), it_per_s=rate, eta_s=math.nan if eta is None else eta,
            params={k: _copy(gaussians.params[k]) for k in keys},
            sh_degree=int(gaussians.sh_degree), active_sh_degree=int(gaussians.active_sh_degree),
            train_rgb=_copy(snap.train_rgb), noise_window=_copy(snap.noise_window),
            window_origin=tuple(int(v) for v in snap.window_origin) if snap.window_origin is not None else None,
            window_size=tuple(int(v) for v in snap.window_size) if snap.window_size is not None else None,
        )
        if download:
            self._attach_download(payload, gaussians)
        self._sent_step, self._sent_time = snap.step, now
        return payload

    def _attach_download(self, payload: _Payload, gaussians: Any) -> None:
        with self._flag_lock:
            payload.download_clients, self._download_clients = sorted(self._download_clients), set()
        payload.download = {k: _copy(v) for k, v in gaussians.params.items()}
        payload.sh_degree, payload.active_sh_degree = int(gaussians.sh_degree), int(gaussians.active_sh_degree)

    def _catch_up_while_paused(self) -> None:
        """While paused (the trainer polls :attr:`paused`), show the last step if it was not sent, and serve downloads."""
        snap = self._last_snapshot
        if self._busy or self._slot is not None:
            return
        if snap.step != self._sent_step or self._download_clients:
            try:
                self._hand_over(self._capture(snap, bool(self._download_clients)))
            except Exception:
                self._sent_step = snap.step  # do not retry this snapshot on every poll
                self._download_clients.clear()
                ERRORS.report("update while paused")

    def _hand_over(self, payload: _Payload) -> None:
        with self._cond:
            if self._slot is not None and self._slot.download_clients and not payload.download_clients:
                payload.download, payload.download_clients = self._slot.download, self._slot.download_clients
            self._slot = payload  # a stale payload still waiting is replaced, never queued
            self._cond.notify()
        self.stats["sent"] += 1

    # -- the page ----------------------------------------------------------------------------------
    def _set_noise_map(self, noise_map: torch.Tensor) -> None:
        data = noise_map.detach().float().cpu().numpy()
        if data.ndim == 4 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 3:
            log.warning("viewer: the world noise map has shape %s, expected [C,H,W]; not shown", tuple(data.shape))
            return
        self._noise_stats = channel_stats(data)
        self._noise_map_shape = (int(data.shape[1]), int(data.shape[2]))
        image = noise_to_rgb(data, self._noise_stats)
        self._noise_map_rgb = resize_to_height(image, self.config.panel_image_height, nearest=True)

    def _build_gui(self) -> None:
        gui = self.app.server.gui
        placeholder = np.full((self.config.panel_image_height, self.config.panel_image_height, 3), 235, np.uint8)
        with gui.add_folder("Training progress"):
            self.progress_bar = gui.add_progress_bar(0.0)
            self.progress_md = gui.add_markdown(self._progress_text(None))
            self.loss_plot = gui.add_uplot(
                data=(np.zeros(0), np.zeros(0)),
                series=({"label": "step"}, {"label": "loss", "stroke": "#d9480f", "width": 1.5}),
                scales={"x": {"time": False, "auto": True}, "y": {"auto": True}},
                axes=({}, {"size": 64}), title="Loss", aspect=2.0,
            )
            self.pause_button = gui.add_button("Pause", hint="Pause / resume training")
            self.save_button = gui.add_button("Save .ply now", hint="The trainer writes saved_step_N.ply into the run folder")
            self.download_button = gui.add_button("Download .ply", hint="Download the current Gaussians to this browser")
        with gui.add_folder("Last training view"):
            self.train_image = gui.add_image(placeholder, label=self.noise_label, format="jpeg")
        if self._noise_map_rgb is not None:
            with gui.add_folder("World noise map"):
                self.map_image = gui.add_image(self._noise_map_rgb, label="World noise map, current window outlined",
                                               format="png")
        else:
            self.map_image = None
        with gui.add_folder("View"):
            self.app.add_scene_controls()
        self.pause_button.on_click(safe("pause button")(self._on_pause))
        self.save_button.on_click(safe("save button")(self._on_save))
        self.download_button.on_click(safe("download button")(self._on_download))

    def _on_pause(self, event: Any) -> None:
        self._paused = not self._paused
        self.pause_button.label = "Resume" if self._paused else "Pause"
        self.pause_button.color = "green" if self._paused else None
        self.progress_md.content = self._progress_text(self._current)

    def _on_save(self, event: Any) -> None:
        with self._flag_lock:
            self._save_requested = True
        client = getattr(event, "client", None)
        if client is not None:
            client.add_notification("Saving", "The trainer writes saved_step_XXXXXX.ply into the run folder"
                                    " after the current step.", auto_close_seconds=4.0)

    def _on_download(self, event: Any) -> None:
        client_id = getattr(event, "client_id", None)
        if client_id is None:
            return
        with self._flag_lock:
            self._download_clients.add(int(client_id))

    def _client_connected(self, client: Any) -> None:
        client.camera.on_update(safe("camera update")(lambda camera: self._mark_dirty(client.client_id)))
        self._mark_dirty(client.client_id)

    def _mark_dirty(self, client_id: int) -> None:
        if self.mode != "render":
            return
        with self._cond:
            self._dirty_clients.add(int(client_id))
            self._cond.notify()

    def _mark_all_dirty(self) -> None:
        for client_id in self.app.server.get_clients():
            self._mark_dirty(client_id)

    def _progress_text(self, p: Optional[_Payload]) -> str:
        state = " · **paused**" if self._paused else ""
        if p is None:
            return f"**Step** 0 / {self.total_steps:,}{state}  \n**t** - · **Gaussians** -"
        pct = 100.0 * p.step / max(1, p.total_steps)
        speed = f"{p.it_per_s:.2f} it/s" if p.it_per_s and math.isfinite(p.it_per_s) else "- it/s"
        return (f"**Step** {p.step:,} / {p.total_steps:,} ({pct:.0f}%) · {speed} · **ETA** {format_duration(p.eta_s)}"
                f"{state}  \n**t** {int(_as_float(p.timestep))} · **Gaussians** {p.num_gaussians:,}")

    # -- the viewer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._slot is None and not self._render_due():
                    self._cond.wait(timeout=self._render_wait())
                if self._closed:
                    return
                payload, self._slot = self._slot, None
                self._busy = True
            try:
                if payload is not None:
                    cpu_start = time.thread_time()
                    self._publish(payload)
                    self.stats["published"] += 1
                    self.stats["publish_cpu_s"] += time.thread_time() - cpu_start
                if self.mode == "render":
                    self._render_dirty()
            except Exception:
                ERRORS.report("viewer thread")
            finally:
                if payload is not None:
                    self.stats["handled"] += 1
                self._busy = False

    def _publish(self, p: _Payload) -> None:
        if p.params is not None:
            self._current = p
            self._publish_panels(p)
            if self.mode == "splats":
                self.app.set_splats(splat_arrays(p.params, self.config.max_splats))
            else:
                self.app.set_count(p.num_gaussians)
                self._mark_all_dirty()
        if p.download is not None:
            self._send_download(p)

    def _publish_panels(self, p: _Payload) -> None:
        while self._losses:
            step, loss = self._losses.popleft()
            self._curve.add(int(step), _as_float(loss))
        steps, values = self._curve.arrays()
        self.loss_plot.data = (steps, values)
        self.progress_bar.value = float(min(100.0, 100.0 * p.step / max(1, p.total_steps)))
        self.progress_md.content = self._progress_text(p)
        height = self.config.panel_image_height
        parts = []
        if p.train_rgb is not None:
            parts.append(resize_to_height(to_uint8(to_numpy(p.train_rgb)), height))
        if p.noise_window is not None and p.noise_window.ndim == 3:
            window = noise_to_rgb(to_numpy(p.noise_window), self._noise_stats)
            parts.append(resize_to_height(window, height, nearest=True))
        if parts:
            self.train_image.image = parts[0] if len(parts) == 1 else side_by_side(parts[0], parts[1])
        if self.map_image is not None and self._noise_map_rgb is not None:
            if p.window_origin is not None and p.window_size is not None and self._noise_map_shape is not None:
                self.map_image.image = outline_window(self._noise_map_rgb, p.window_origin, p.window_size,
                                                      self._noise_map_shape)

    def _send_download(self, p: _Payload) -> None:
        content = in_fresh_thread(_ply_bytes, p.download, p.sh_degree, p.active_sh_degree)
        clients = self.app.server.get_clients()
        for client_id in p.download_clients:
            client = clients.get(client_id)
            if client is not None:
                client.send_file_download(f"fsd_gs_step_{p.step:06d}.ply", content, save_immediately=True)

    # -- server renders ("render" mode) --------------------------------------------------------------
    def _render_due(self) -> bool:
        if self.mode != "render" or not self._dirty_clients or self._current is None:
            return False
        now = time.perf_counter()
        period = 1.0 / self.config.render_fps
        return any(now - self._last_render.get(c, -math.inf) >= period for c in self._dirty_clients)

    def _render_wait(self) -> Optional[float]:
        return 1.0 / self.config.render_fps if self._dirty_clients else None

    def _render_dirty(self) -> None:
        current = self._current
        if current is None or current.params is None:
            return
        now = time.perf_counter()
        period = 1.0 / self.config.render_fps
        clients = self.app.server.get_clients()
        with self._cond:
            due = [c for c in self._dirty_clients if now - self._last_render.get(c, -math.inf) >= period]
            self._dirty_clients.difference_update(due)
        for client_id in due:
            client = clients.get(client_id)
            if client is None:
                continue
            self._last_render[client_id] = now
            try:
                in_fresh_thread(self._render_for, client, current)
                self.stats["renders"] += 1
            except Exception:
                ERRORS.report("server render")
                self._render_failures += 1
                if self._render_failures >= 3:
                    log.warning("viewer: server renders keep failing; switching to in-browser splats")
                    self.mode = "splats"
                    self.app.set_splats(splat_arrays(current.params, self.config.max_splats))
                    return

    @torch.no_grad()
    def _render_for(self, client: Any, p: _Payload) -> None:
        from fsd_gs.gaussians import Gaussians
        from fsd_gs.render import render

        cam = client.camera
        try:
            wxyz, position, fov = cam.wxyz, cam.position, cam.fov
            width, height = cam.image_width, cam.image_height
        except AssertionError:  # no camera message from this browser yet
            self._mark_dirty(client.client_id)
            return
        device = p.params["means"].device
        cameras = cameras_from_viser(wxyz, position, fov, width, height, self.config.render_max_side, device)
        gaussians = Gaussians(dict(p.params), p.sh_degree, p.active_sh_degree)
        background = torch.tensor(self.app.background, dtype=torch.float32, device=device)
        out = render(gaussians, cameras, background)
        image = to_uint8(to_numpy(out.rgb[0]))
        client.scene.set_background_image(image, format="jpeg", jpeg_quality=85)


def _finite(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def _copy(value: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A contiguous float32 copy on the tensor's own device (asynchronous on CUDA: no host sync)."""
    if value is None:
        return None
    return value.detach().to(dtype=torch.float32, copy=True).contiguous()


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


def _ply_bytes(params: dict[str, torch.Tensor], sh_degree: int, active_sh_degree: int) -> bytes:
    """The INRIA-layout .ply of these parameters, as bytes."""
    from fsd_gs.gaussians import Gaussians
    from fsd_gs.io.ply import write_ply

    gaussians = Gaussians({k: v.cpu() for k, v in params.items()}, sh_degree, active_sh_degree)
    with tempfile.TemporaryDirectory(prefix="fsd_gs_viewer_") as tmp:
        path = Path(tmp) / "download.ply"
        write_ply(gaussians, path)
        return path.read_bytes()
