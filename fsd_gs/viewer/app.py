"""The viser application shared by the live and the standalone viewer.

:class:`ViewerApp` owns one ``viser.ViserServer`` and the pieces both viewers show: the Gaussians as
in-browser splats, the background colour, "reset view" and the Gaussian count. It also holds the
safe defaults: bind 127.0.0.1 unless told otherwise, take the next free port when the asked one is
in use (and say so), and never offer public share links.

Conversions between our tensors and viser live here too: :func:`splat_arrays` (Gaussian parameters
-> centres / covariances / colours / opacities for viser's splat renderer) and
:func:`cameras_from_viser` (a browser camera -> our :class:`fsd_gs.camera.Cameras`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import ipaddress
import logging
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import numpy as np
import torch

from fsd_gs.camera import Cameras
from fsd_gs.gaussians import SH_C0

log = logging.getLogger("fsd_gs.viewer")

F = TypeVar("F", bound=Callable[..., Any])
SPLATS_NODE = "/gaussians"


# -- never let a viewer error escape --------------------------------------------------------------
class _ErrorLog:
    """Logs each failing viewer site with its traceback the first times, then only every 100th time."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def report(self, where: str) -> None:
        with self._lock:
            n = self.counts.get(where, 0) + 1
            self.counts[where] = n
        if n <= 3:
            log.exception("viewer: error in %s (the viewer carries on; training is not affected)", where)
        elif n % 100 == 0:
            log.error("viewer: %s has failed %d times (the viewer carries on)", where, n)


ERRORS = _ErrorLog()
"""Counts of swallowed viewer errors per site (tests read it)."""


def safe(where: str) -> Callable[[F], F]:
    """Decorator: run the function, but log and swallow any exception (a viewer callback never raises)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception:
                ERRORS.report(where)
                return None

        return inner  # type: ignore[return-value]

    return wrap


# -- network --------------------------------------------------------------------------------------
def port_is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound for listening right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def find_free_port(host: str, port: int, tries: int = 200) -> int:
    """``port`` if it is free on ``host``, else the next free one above it (port 0: any free port)."""
    if port == 0:
        return 0
    for candidate in range(port, min(65536, port + tries)):
        if port_is_free(host, candidate):
            return candidate
    raise OSError(f"no free port in {port}..{port + tries - 1} on {host}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_for(host: str, port: int) -> str:
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


# -- conversions ----------------------------------------------------------------------------------
@dataclass
class SplatArrays:
    """Gaussians in the form viser's in-browser splat renderer takes (float32 numpy arrays).

    Attributes:
        centers: [M,3] world positions.
        covariances: [M,3,3] world-space covariances R diag(s^2) R^T.
        rgbs: [M,3] colours in [0,1] (the view-independent DC term of the SH).
        opacities: [M,1] in [0,1].
        total: N, the number of Gaussians before subsampling (M <= N).
    """

    centers: np.ndarray
    covariances: np.ndarray
    rgbs: np.ndarray
    opacities: np.ndarray
    total: int

    def __len__(self) -> int:
        return int(self.centers.shape[0])


def to_numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    """A numpy view or copy of a tensor without any CPU torch kernel (a device tensor is copied to the host).

    The viewer thread must not run torch CPU kernels: a second thread that enters an OpenMP parallel region
    keeps its own OpenMP team alive, and libgomp then throttles the training thread's team (we measured
    training at half speed on a 2-core CPU). Device-to-host copies and numpy are fine.
    """
    if isinstance(value, np.ndarray):
        return value
    value = value.detach()
    if value.device.type != "cpu":
        value = value.cpu()
    return value.numpy()


def quat_to_rotmat(quats: np.ndarray) -> np.ndarray:
    """Rotation matrices from (not necessarily unit) wxyz quaternions: [N,4] -> [N,3,3] float32 (scipy; numpy only,
    since torch maths in the viewer thread slows training, see splat_arrays)."""
    from scipy.spatial.transform import Rotation

    q = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
    if len(q) == 0:
        return np.zeros((0, 3, 3), dtype=np.float32)
    return Rotation.from_quat(q, scalar_first=True).as_matrix().astype(np.float32)


def splat_arrays(params: Mapping[str, torch.Tensor | np.ndarray], max_splats: Optional[int] = None) -> SplatArrays:
    """Viser splats from raw Gaussian parameters (log-scales, wxyz quats, logit opacities, sh0 [N,1,3]).

    When N > ``max_splats`` the ``max_splats`` most opaque Gaussians are kept. Tensors may live on any
    device; everything after the copy to the host is numpy (see :func:`to_numpy`).
    """
    logits = to_numpy(params["opacities"]).reshape(-1).astype(np.float32, copy=False)
    total = int(logits.shape[0])
    index: Optional[np.ndarray] = None
    if max_splats is not None and total > max_splats:
        index = np.argpartition(-logits, max_splats - 1)[:max_splats]

    def take(key: str) -> np.ndarray:
        value = to_numpy(params[key]).astype(np.float32, copy=False)
        return value[index] if index is not None else value

    means, log_scales, quats, sh0 = take("means"), take("scales"), take("quats"), take("sh0")
    opacities = 1.0 / (1.0 + np.exp(-(logits[index] if index is not None else logits)))
    rot = quat_to_rotmat(quats)
    scaled = rot * np.exp(log_scales)[:, None, :]  # R diag(s)
    covariances = np.einsum("nij,nkj->nik", scaled, scaled)  # R diag(s^2) R^T
    rgbs = np.clip(sh0.reshape(-1, 3) * SH_C0 + 0.5, 0.0, 1.0)
    return SplatArrays(
        np.ascontiguousarray(means),
        covariances.astype(np.float32),
        rgbs.astype(np.float32),
        opacities.reshape(-1, 1).astype(np.float32),
        total,
    )


def viewmat_from_viser(wxyz: np.ndarray, position: np.ndarray) -> np.ndarray:
    """World-to-camera OpenCV matrix [4,4] from a viser camera pose.

    Viser's camera follows OpenCV (x right, y down, z forward) and gives ``wxyz``/``position`` as the
    camera-to-world transform (``P_world = R p_camera + t``); ours is its inverse.
    """
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    viewmat = np.eye(4)
    viewmat[:3, :3] = rot.T
    viewmat[:3, 3] = -rot.T @ np.asarray(position, dtype=np.float64)
    return viewmat


def cameras_from_viser(
    wxyz: np.ndarray,
    position: np.ndarray,
    fov_y: float,
    image_width: int,
    image_height: int,
    max_side: int,
    device: torch.device | str = "cpu",
) -> Cameras:
    """One of our cameras (B = 1) seeing what the browser sees; the canvas is scaled to ``max_side``.

    Args:
        wxyz, position: viser camera-to-world pose (OpenCV axes).
        fov_y: vertical field of view in radians.
        image_width, image_height: the browser canvas in pixels.
    """
    scale = min(1.0, max_side / max(image_width, image_height, 1))
    width, height = max(1, round(image_width * scale)), max(1, round(image_height * scale))
    viewmat = torch.from_numpy(viewmat_from_viser(wxyz, position)).float()[None]
    fy = 0.5 * height / np.tan(fov_y / 2)
    K = torch.tensor([[fy, 0.0, width / 2], [0.0, fy, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float32)[None]
    distance = float(np.linalg.norm(position))
    cams = Cameras(
        viewmat,
        K,
        width,
        height,
        torch.zeros(1),
        torch.zeros(1),
        torch.tensor([distance]),
        torch.tensor([float(np.degrees(fov_y))]),
    )
    return cams.to(device)


def rgb_uint8(color: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(round(255 * min(1.0, max(0.0, c)))) for c in color)  # type: ignore[return-value]


# -- the app --------------------------------------------------------------------------------------
@dataclass
class ViewFrame:
    """Where "reset view" puts the camera: looking at ``center`` from ``distance`` at ``elevation`` degrees,
    from the side of ``front`` (a unit vector), with ``up`` up."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    distance: float = 2.5
    elevation: float = 15.0
    front: tuple[float, float, float] = (1.0, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov_deg: float = 50.0

    def position(self) -> np.ndarray:
        e = np.radians(self.elevation)
        return np.asarray(self.center) + self.distance * (np.cos(e) * np.asarray(self.front) + np.sin(e) * np.asarray(self.up))


class ViewerApp:
    """A viser server with the shared scene and controls (count, background colour, reset view).

    Args:
        host, port: where to listen; a port in use moves to the next free one (printed).
        background: RGB in [0,1] of the 3D view's background.
        label: title of the control panel.
        frame: the "reset view" camera.
        announce: where the port-moved / network-exposure notes go (default: print).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        background: tuple[float, float, float] = (1.0, 1.0, 1.0),
        label: str = "fsd_gs",
        frame: Optional[ViewFrame] = None,
        announce: Callable[[str], None] = print,
    ) -> None:
        import viser

        from fsd_gs.errors import UserError

        try:
            free = find_free_port(host, port)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}: {exc}; pass another --viewer.host/--port") from exc
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints its own banner; we print one URL line
            self.server = viser.ViserServer(host=host, port=free, label=label, verbose=False)
        self.host = host
        self.port = int(self.server.get_port())
        self.url = url_for(host, self.port)
        if port != 0 and self.port != port:
            announce(f"viewer: port {port} is in use; using port {self.port} instead")
        if not is_loopback(host):
            announce(f"viewer: listening on {host}:{self.port}, reachable from other machines on the network")
        self._no_share_links()
        self.server.gui.configure_theme(show_share_button=False, show_logo=False, control_width="medium")
        self.frame = frame or ViewFrame()
        self.background = (float(background[0]), float(background[1]), float(background[2]))
        self.on_background: list[Callable[[tuple[float, float, float]], None]] = []
        self.on_client: list[Callable[[Any], None]] = []
        self._splats: Any = None
        self._apply_initial_camera()
        self._set_background_image(self.background)
        self.server.on_client_connect(safe("client connect")(self._client_connected))

    # -- safety ----------------------------------------------------------------------------------
    def _no_share_links(self) -> None:
        """Drop viser's handler for the page's "share" request: no public tunnel is ever opened."""
        from viser import _messages

        handlers = self.server._websock_server._incoming_handlers  # viser has no public switch for this
        handlers.pop(_messages.ShareUrlRequest, None)

    # -- shared controls -------------------------------------------------------------------------
    def add_scene_controls(self) -> None:
        """The Gaussian count, background colour and reset-view controls (in the current GUI folder)."""
        gui = self.server.gui
        self.count_md = gui.add_markdown("**Gaussians:** -")
        self.background_rgb = gui.add_rgb("Background", initial_value=rgb_uint8(self.background))
        self.reset_button = gui.add_button("Reset view", icon=None)
        self.background_rgb.on_update(
            safe("background colour")(
                lambda event: self.set_background(
                    (
                        self.background_rgb.value[0] / 255.0,
                        self.background_rgb.value[1] / 255.0,
                        self.background_rgb.value[2] / 255.0,
                    )
                )
            )
        )
        self.reset_button.on_click(safe("reset view")(lambda event: self.reset_view(event.client)))

    def set_count(self, total: int, shown: Optional[int] = None) -> None:
        text = f"**Gaussians:** {total:,}"
        if shown is not None and shown < total:
            text += f" (showing the {shown:,} most opaque)"
        if getattr(self, "count_md", None) is not None and self.count_md.content != text:
            self.count_md.content = text

    def set_background(self, color: tuple[float, float, float]) -> None:
        self.background = (float(color[0]), float(color[1]), float(color[2]))
        self._set_background_image(self.background)
        for cb in list(self.on_background):
            cb(self.background)

    def _set_background_image(self, color: tuple[float, float, float]) -> None:
        image = np.empty((4, 4, 3), dtype=np.uint8)
        image[:] = rgb_uint8(color)
        self.server.scene.set_background_image(image, format="png")

    def _apply_initial_camera(self) -> None:
        cam = self.server.initial_camera
        cam.fov = float(np.radians(self.frame.fov_deg))
        cam.up = self.frame.up
        cam.look_at = self.frame.center
        cam.position = tuple(self.frame.position())

    def reset_view(self, client: Any = None) -> None:
        """Put one browser's camera (or every browser's) back to the frame."""
        clients = [client] if client is not None else list(self.server.get_clients().values())
        for c in clients:
            with c.atomic():
                c.camera.up_direction = self.frame.up
                c.camera.fov = float(np.radians(self.frame.fov_deg))
                c.camera.position = tuple(self.frame.position())
                c.camera.look_at = self.frame.center

    def _client_connected(self, client: Any) -> None:
        for cb in list(self.on_client):
            cb(client)

    # -- splats ----------------------------------------------------------------------------------
    def set_splats(self, splats: SplatArrays) -> None:
        """Show the Gaussians as in-browser splats (updating the node in place after the first call) and the count."""
        if self._splats is None:
            self._splats = self.server.scene.add_gaussian_splats(
                SPLATS_NODE,
                centers=splats.centers,
                covariances=splats.covariances,
                rgbs=splats.rgbs,
                opacities=splats.opacities,
            )
        else:  # an in-place buffer update: the browser skips the fade-in that a new node gets
            self._splats.set_gaussians(splats.centers, splats.covariances, splats.rgbs, splats.opacities)
        self.set_count(splats.total, len(splats))

    def remove_splats(self) -> None:
        if self._splats is not None:
            self._splats.remove()
            self._splats = None

    def stop(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints "Server stopped"
            self.server.stop()
