"""The trainer-to-viewer hand-over: what :meth:`LiveViewer.update` does on the trainer's thread (no viser here).

The trainer calls :meth:`Handover.update` with a :class:`TrainingSnapshot` EVERY step. On most steps that
call only appends the loss to a queue and compares two numbers (about a microsecond). Every ``update_every``
steps (and at most once per ``min_interval_s``), and only when the viewer thread is idle, it clones the few
tensors it needs on their device (no host sync) into a :class:`Payload` and puts it in the one-slot
:attr:`Handover.slot`; the viewer thread takes it with :meth:`Handover.take`. While that thread is busy new
snapshots are simply not taken (a stale one is never queued). The page's controls only set flags here
(pause, "save .ply now", "download .ply"), which the trainer reads.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, Union, overload

import torch

from fsd_gs.viewer.app import ERRORS
from fsd_gs.viewer.config import ViewerConfig, resolve_mode

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
class Payload:
    """A snapshot's data copied on the trainer's thread, for the viewer thread (tensors float32, own device)."""

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


class Handover:
    """The state the trainer's thread and the viewer thread share, and the trainer's side of it.

    Args:
        config: the viewer options (update_every, min_interval_s, mode).
        stats: the viewer's counters; this side counts "updates", "sent" and "skipped_busy".

    Attributes:
        mode: "splats" or "render" once the first snapshot is captured (None before).
        slot: the payload waiting for the viewer thread, or None.
        busy: True while the viewer thread handles a payload.
        cond: the condition the viewer thread waits on (also notified by the server renderer).
        losses: (step, loss) of every step not yet drawn.
        sent_step: the step of the last captured snapshot.
    """

    def __init__(self, config: ViewerConfig, stats: dict[str, Any]) -> None:
        self.config = config
        self.stats = stats
        self.mode: Optional[str] = None
        self.sent_step = -(10**9)
        self.sent_time = -math.inf
        self.losses: collections.deque = collections.deque(maxlen=LOSS_QUEUE_LIMIT)
        self.last_snapshot: Optional[TrainingSnapshot] = None
        self._rate: Optional[float] = None
        self.paused = False
        self._save_requested = False
        self._download_clients: set[int] = set()
        self._flag_lock = threading.Lock()
        self.cond = threading.Condition()
        self.slot: Optional[Payload] = None
        self.busy = False
        self.closed = False

    # -- the trainer's thread --------------------------------------------------------------------
    def update(self, snapshot: TrainingSnapshot) -> None:
        """Take the state after a step: hand it over when due and the viewer thread is idle. Never blocks."""
        self.stats["updates"] += 1
        self.losses.append((snapshot.step, snapshot.loss))
        self.last_snapshot = snapshot
        final = snapshot.step >= snapshot.total_steps
        download = bool(self._download_clients)
        if not (final or download):
            if snapshot.step - self.sent_step < self.config.update_every:
                return
            if time.perf_counter() - self.sent_time < self.config.min_interval_s:
                return
            if self.busy or self.slot is not None:
                self.stats["skipped_busy"] += 1
                return
        self.hand_over(self.capture(snapshot, download))

    def pop_save_request(self) -> bool:
        """True once after the user clicked "Save .ply now" (the trainer then writes the .ply itself)."""
        if not self._save_requested:
            return False
        with self._flag_lock:
            requested, self._save_requested = self._save_requested, False
        return requested

    def poll_paused(self) -> bool:
        """:attr:`paused`; while paused, also show the last step if it was not sent, and serve downloads."""
        if self.paused and self.last_snapshot is not None:
            self._catch_up_while_paused(self.last_snapshot)
        return self.paused

    @torch.no_grad()
    def capture(self, snap: TrainingSnapshot, download: bool) -> Payload:
        """Copy what the viewer needs of ``snap`` on its device (no host sync); decides :attr:`mode` the first time."""
        gaussians = snap.gaussians
        if self.mode is None:
            self.mode = resolve_mode(self.config.mode, gaussians.device.type)
        keys = SPLAT_KEYS + (("shN",) if self.mode == "render" else ())
        now = time.perf_counter()
        rate, eta = self._speed(snap, now)
        payload = Payload(
            step=int(snap.step),
            total_steps=int(snap.total_steps),
            timestep=_detach(snap.timestep),
            num_gaussians=int(snap.num_gaussians),
            it_per_s=rate,
            eta_s=math.nan if eta is None else eta,
            params={k: _copy(gaussians.params[k]) for k in keys},
            sh_degree=int(gaussians.sh_degree),
            active_sh_degree=int(gaussians.active_sh_degree),
            train_rgb=_copy(snap.train_rgb),
            noise_window=_copy(snap.noise_window),
            window_origin=_pair(snap.window_origin),
            window_size=_pair(snap.window_size),
        )
        if download:
            self._attach_download(payload, gaussians)
        self.sent_step, self.sent_time = snap.step, now
        return payload

    def _speed(self, snap: TrainingSnapshot, now: float) -> tuple[float, Optional[float]]:
        """(steps per second, seconds left or None): the trainer's, or measured between captures."""
        rate, eta = _finite(snap.it_per_s), _finite(snap.eta_s)
        if rate is None or rate <= 0:  # the trainer has no estimate (e.g. no progress bar): use ours
            if math.isfinite(self.sent_time) and snap.step > self.sent_step:
                measured = (snap.step - self.sent_step) / max(1e-9, now - self.sent_time)
                self._rate = measured if self._rate is None else 0.7 * self._rate + 0.3 * measured
            rate = self._rate or 0.0
        if eta is None and rate > 0:
            eta = (snap.total_steps - snap.step) / rate
        return rate, eta

    def _attach_download(self, payload: Payload, gaussians: Any) -> None:
        with self._flag_lock:
            payload.download_clients, self._download_clients = sorted(self._download_clients), set()
        payload.download = {k: _copy(v) for k, v in gaussians.params.items()}
        payload.sh_degree, payload.active_sh_degree = int(gaussians.sh_degree), int(gaussians.active_sh_degree)

    def _catch_up_while_paused(self, snap: TrainingSnapshot) -> None:
        if self.busy or self.slot is not None:
            return
        if snap.step != self.sent_step or self._download_clients:
            try:
                self.hand_over(self.capture(snap, bool(self._download_clients)))
            except Exception:
                self.sent_step = snap.step  # do not retry this snapshot on every poll
                self._download_clients.clear()
                ERRORS.report("update while paused")

    def hand_over(self, payload: Payload) -> None:
        """Put ``payload`` in the slot (replacing a stale one, whose pending download it keeps) and wake the thread."""
        with self.cond:
            if self.slot is not None and self.slot.download_clients and not payload.download_clients:
                payload.download, payload.download_clients = self.slot.download, self.slot.download_clients
            self.slot = payload  # a stale payload still waiting is replaced, never queued
            self.cond.notify()
        self.stats["sent"] += 1

    # -- the page's controls (viser's threads) ----------------------------------------------------
    def toggle_pause(self) -> bool:
        """Pause or resume training; returns the new :attr:`paused`."""
        self.paused = not self.paused
        return self.paused

    def request_save(self) -> None:
        with self._flag_lock:
            self._save_requested = True

    def request_download(self, client_id: int) -> None:
        """Send the current Gaussians to this browser with the next captured step."""
        with self._flag_lock:
            self._download_clients.add(int(client_id))

    # -- the viewer thread ------------------------------------------------------------------------
    def take(self, extra_due: Callable[[], bool], wait: Callable[[], Optional[float]]) -> tuple[bool, Optional[Payload]]:
        """Wait until a payload is waiting, ``extra_due()`` or :meth:`close`; returns (open, payload or None).

        Marks the thread :attr:`busy` until :meth:`done`; ``wait()`` bounds each wait (None: until notified).
        """
        with self.cond:
            while not self.closed and self.slot is None and not extra_due():
                self.cond.wait(timeout=wait())
            if self.closed:
                return False, None
            payload, self.slot = self.slot, None
            self.busy = True
        return True, payload

    def done(self) -> None:
        self.busy = False

    def close(self) -> None:
        """Wake the viewer thread for good (training is unpaused)."""
        self.closed = True
        self.paused = False
        with self.cond:
            self.cond.notify_all()


def as_float(value: Number) -> float:
    """A float of a number or the first element of a tensor (a host sync for device tensors: viewer thread only)."""
    return float(value.detach().reshape(-1)[0]) if isinstance(value, torch.Tensor) else float(value)


def _pair(value: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
    return (int(value[0]), int(value[1])) if value is not None else None


def _finite(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


@overload
def _copy(value: torch.Tensor) -> torch.Tensor: ...
@overload
def _copy(value: None) -> None: ...
def _copy(value: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A contiguous float32 copy on the tensor's own device (asynchronous on CUDA: no host sync)."""
    if value is None:
        return None
    return value.detach().to(dtype=torch.float32, copy=True).contiguous()
