"""The shapes world: procedural 3D objects built from Gaussians, so a 3D Gaussian Splatting asset can match them exactly.

An object is a handful of parts (boxes, ellipsoids, cylinders, cones) whose surfaces are covered by small
isotropic Gaussians. Every object sits at the origin in a canonical pose: z up, its front facing +x
(azimuth 0 in :mod:`fsd_gs.camera`), its largest half-extent between :attr:`WorldConfig.size_range`, so it
fits the orbit cameras of training (distance ~2.5, fovy 40-70 deg).

The "colour" of an object is the colour of its main body (the cap of a mushroom, the walls of a house);
secondary parts (stems, doors, wheels, eyes) keep fixed neutral colours. A simple light from above-front
is baked into the Gaussian colours, so shapes read as 3D and the front differs from the back.

Everything random comes from an explicit ``torch.Generator``: the same seed gives the same object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fsd_gs.gaussians import Gaussians, rgb_to_sh0

KINDS: tuple[str, ...] = (
    "mushroom",
    "house",
    "chair",
    "bird",
    "car",
    "tree",
    "table",
    "snowman",
    "rocket",
    "cup",
    "lamp",
    "fish",
    "robot",
)
"""Object kinds (one word each: captions are "a {colour} {kind}")."""

FRONT_KINDS: tuple[str, ...] = ("house", "chair", "bird", "car", "snowman", "rocket", "fish", "robot")
"""Kinds with a clear front (door, face, beak, headlights...) that differs from their back and sides."""

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10),
    "orange": (0.96, 0.52, 0.08),
    "yellow": (0.95, 0.86, 0.12),
    "green": (0.18, 0.66, 0.20),
    "cyan": (0.10, 0.78, 0.82),
    "blue": (0.14, 0.26, 0.88),
    "purple": (0.52, 0.18, 0.72),
    "pink": (0.97, 0.55, 0.72),
}
"""Named colours of the main body (RGB in [0,1] before lighting)."""

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Fixed colours of secondary parts: neutral, far from every named colour.
DARK = (0.12, 0.12, 0.13)
GREY = (0.55, 0.55, 0.57)
LIGHT = (0.86, 0.84, 0.80)
WOOD = (0.40, 0.27, 0.16)

LIGHT_DIR = (0.45, 0.30, 0.84)
"""Direction towards the baked light (object frame): above, slightly in front and to the left (+y)."""


@dataclass
class WorldConfig:
    """How objects are built."""

    spacing: float = 0.045
    """Target distance between neighbouring Gaussians on a surface (world units; ~1 px at 64 px, fovy 50)."""
    sigma_factor: float = 0.75
    """Gaussian standard deviation as a multiple of ``spacing``."""
    opacity: float = 0.95
    """Opacity of every Gaussian."""
    size_range: tuple[float, float] = (0.5, 0.72)
    """The largest half-extent of an object is drawn uniformly from this range (world units)."""
    colour_jitter: float = 0.05
    """Per-object uniform jitter added to the named colour, per channel."""
    ambient: float = 0.55
    """Baked lighting: ambient term (the diffuse term is 1 - ambient)."""


@dataclass
class ShapeObject:
    """One object of the world.

    Attributes:
        gaussians: the Gaussians, on the CPU, canonical pose (front = +x).
        kind: entry of :data:`KINDS`.
        colour: entry of :data:`COLOUR_NAMES`.
    """

    gaussians: Gaussians
    kind: str
    colour: str

    @property
    def kind_index(self) -> int:
        return KINDS.index(self.kind)

    @property
    def colour_index(self) -> int:
        return COLOUR_NAMES.index(self.colour)


# -- parts ----------------------------------------------------------------------------------------
@dataclass
class _Parts:
    """Accumulates surface points [N,3], unit normals [N,3] and base colours [N,3] of an object's parts."""

    generator: torch.Generator
    spacing: float
    points: list[torch.Tensor] = field(default_factory=list)
    normals: list[torch.Tensor] = field(default_factory=list)
    colours: list[torch.Tensor] = field(default_factory=list)

    def u(self, lo: float, hi: float) -> float:
        """One uniform number in [lo, hi)."""
        return lo + (hi - lo) * float(torch.rand((), generator=self.generator, dtype=torch.float64))

    def _count(self, area: float) -> int:
        return max(8, int(math.ceil(area / self.spacing**2)))

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator, dtype=torch.float64).float()

    def add(self, points: torch.Tensor, normals: torch.Tensor, colour: tuple[float, float, float] | torch.Tensor) -> None:
        self.points.append(points)
        self.normals.append(torch.nn.functional.normalize(normals, dim=-1))
        self.colours.append(torch.as_tensor(colour, dtype=torch.float32).expand(points.shape[0], 3))

    # Each primitive is built around the origin along +z, then rotated by ``axis`` and moved to ``center``.
    def box(self, center: tuple, size: tuple, colour, faces: str = "xXyYzZ") -> None:
        """An axis-aligned box surface; ``faces`` selects the faces (x = -x side, X = +x side, ...)."""
        sx, sy, sz = size
        pts, nrm = [], []
        for face in faces:
            axis = "xyz".index(face.lower())
            sign = 1.0 if face.isupper() else -1.0
            other = [a for a in range(3) if a != axis]
            area = size[other[0]] * size[other[1]]
            n = self._count(area)
            p = (self._rand(n, 3) - 0.5) * torch.tensor([sx, sy, sz])
            p[:, axis] = sign * size[axis] / 2
            normal = torch.zeros(n, 3)
            normal[:, axis] = sign
            pts.append(p)
            nrm.append(normal)
        self.add(torch.cat(pts) + torch.tensor(center), torch.cat(nrm), colour)

    def ellipsoid(self, center: tuple, radii: tuple, colour, z_min: float = -1.0, axis: tuple = (0.0, 0.0, 1.0)) -> None:
        """An ellipsoid surface; only the part with unit-sphere z >= ``z_min`` (1 = top only, -1 = whole)."""
        a, b, c = radii
        p = 1.6
        area = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p) * (1 - z_min) / 2
        n = self._count(area)
        z = z_min + (1 - z_min) * self._rand(n)
        phi = 2 * math.pi * self._rand(n)
        r = (1 - z**2).clamp_min(0).sqrt()
        unit = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)
        radii_t = torch.tensor(radii)
        self.add(_orient(unit * radii_t, axis) + torch.tensor(center), _orient(unit / radii_t, axis), colour)

    def cylinder(
        self,
        center: tuple,
        radius: float,
        height: float,
        colour,
        axis: tuple = (0.0, 0.0, 1.0),
        caps: str = "tb",
        radius_top: float | None = None,
    ) -> None:
        """A (possibly tapered) cylinder centred at ``center`` along ``axis``; caps "t" (top) and/or "b" (bottom)."""
        r0, r1 = radius, radius if radius_top is None else radius_top
        slant = math.hypot(height, r0 - r1)
        n = self._count(math.pi * (r0 + r1) * slant)
        h = self._rand(n)
        phi = 2 * math.pi * self._rand(n)
        r = r0 + (r1 - r0) * h
        pts = [torch.stack([r * torch.cos(phi), r * torch.sin(phi), (h - 0.5) * height], dim=-1)]
        nrm = [torch.stack([torch.cos(phi) * height, torch.sin(phi) * height, torch.full_like(h, r0 - r1)], dim=-1)]
        for cap, rc, zc, nz in (("t", r1, height / 2, 1.0), ("b", r0, -height / 2, -1.0)):
            if cap in caps and rc > 0:
                m = self._count(math.pi * rc**2)
                rr = rc * self._rand(m).sqrt()
                ph = 2 * math.pi * self._rand(m)
                pts.append(torch.stack([rr * torch.cos(ph), rr * torch.sin(ph), torch.full_like(rr, zc)], dim=-1))
                nrm.append(torch.tensor([0.0, 0.0, nz]).expand(m, 3))
        self.add(_orient(torch.cat(pts), axis) + torch.tensor(center), _orient(torch.cat(nrm), axis), colour)

    def cone(self, center: tuple, radius: float, height: float, colour, axis: tuple = (0.0, 0.0, 1.0), base: bool = True) -> None:
        """A cone whose base circle is centred at ``center`` and whose tip is ``height`` along ``axis``."""
        offset = torch.tensor(axis, dtype=torch.float32)
        mid = tuple((torch.tensor(center) + offset / offset.norm() * height / 2).tolist())
        self.cylinder(mid, radius, height, colour, axis=axis, caps="b" if base else "", radius_top=0.0)

    def triangle(self, a: tuple, b: tuple, c: tuple, colour, normal: tuple | None = None) -> None:
        """A flat triangle with corners ``a``, ``b``, ``c``; ``normal`` None = seen from both sides (random sign)."""
        a_t, b_t, c_t = (torch.tensor(v, dtype=torch.float32) for v in (a, b, c))
        cross = torch.linalg.cross(b_t - a_t, c_t - a_t)
        n = self._count(float(cross.norm()) / 2)
        s, t = self._rand(n), self._rand(n)
        flip = s + t > 1
        s, t = torch.where(flip, 1 - s, s), torch.where(flip, 1 - t, t)
        p = a_t + s[:, None] * (b_t - a_t) + t[:, None] * (c_t - a_t)
        if normal is None:
            sign = torch.where(self._rand(n) < 0.5, -1.0, 1.0)[:, None]
            self.add(p, cross.expand(n, 3) * sign, colour)
        else:
            self.add(p, torch.tensor(normal, dtype=torch.float32).expand(n, 3), colour)

    def fin(self, root: tuple, length: float, height: float, colour, direction: tuple, up: tuple = (0.0, 0.0, 1.0)) -> None:
        """A flat triangle (both faces): an edge of ``length`` along ``direction`` from ``root``, apex ``height`` along ``up``."""
        d = torch.nn.functional.normalize(torch.tensor(direction, dtype=torch.float32), dim=0)
        up_t = torch.nn.functional.normalize(torch.tensor(up, dtype=torch.float32), dim=0)
        n = self._count(length * height)  # both faces share the points: half the area each, twice
        s, t = self._rand(n), self._rand(n)
        flip = s + t > 1
        s, t = torch.where(flip, 1 - s, s), torch.where(flip, 1 - t, t)
        p = torch.tensor(root) + s[:, None] * d * length + t[:, None] * up_t * height
        normal = torch.linalg.cross(d, up_t).expand(n, 3)
        sign = torch.where(self._rand(n) < 0.5, -1.0, 1.0)[:, None]
        self.add(p, normal * sign, colour)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.cat(self.points), torch.cat(self.normals), torch.cat(self.colours)


def _orient(v: torch.Tensor, axis: tuple) -> torch.Tensor:
    """Rotate vectors [N,3] built along +z so that +z maps to ``axis`` (shortest rotation)."""
    a = torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float32), dim=0)
    z = torch.tensor([0.0, 0.0, 1.0])
    c = float(a @ z)
    if c > 1 - 1e-6:
        return v
    if c < -1 + 1e-6:
        return v * torch.tensor([1.0, -1.0, -1.0])
    k = torch.nn.functional.normalize(torch.linalg.cross(z, a), dim=0)
    kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    s = math.sqrt(1 - c * c)
    rot = torch.eye(3) + s * kx + (1 - c) * (kx @ kx)
    return v @ rot.T


# -- the kinds ------------------------------------------------------------------------------------
def _mushroom(p: _Parts, col) -> None:
    stem_r, stem_h = p.u(0.10, 0.18), p.u(0.35, 0.6)
    cap_r, cap_h = p.u(0.32, 0.5), p.u(0.18, 0.34)
    p.cylinder((0, 0, stem_h / 2), stem_r, stem_h, LIGHT, caps="b")
    p.ellipsoid((0, 0, stem_h), (cap_r, cap_r, cap_h), col, z_min=0.0)
    p.cylinder((0, 0, stem_h), cap_r, 1e-3, LIGHT, caps="b")  # the cap's underside


def _house(p: _Parts, col) -> None:
    w, d, h = p.u(0.7, 1.0), p.u(0.8, 1.2), p.u(0.5, 0.8)
    roof_h = p.u(0.3, 0.55)
    p.box((0, 0, h / 2), (w, d, h), col, faces="xXyYz")
    # Gable roof: ridge along y, two sloped planes and two triangular gables.
    over = 0.06
    half = w / 2 + over
    slope = math.hypot(half, roof_h)
    roof = (0.45, 0.20, 0.16) if p.u(0, 1) < 0.5 else (0.30, 0.30, 0.34)
    for sign in (-1.0, 1.0):
        n = p._count(slope * (d + 2 * over))
        s, t = p._rand(n), p._rand(n) - 0.5
        pts = torch.stack([sign * half * (1 - s), t * (d + 2 * over), h + roof_h * s], dim=-1)
        normal = torch.tensor([sign * roof_h, 0.0, half]).expand(n, 3)
        p.add(pts, normal, roof)
    for sign in (-1.0, 1.0):
        y = sign * d / 2
        p.triangle((-w / 2, y, h), (w / 2, y, h), (0.0, y, h + roof_h), col, normal=(0.0, sign, 0.0))
    # Door on the front (+x), windows beside it and on the sides.
    door_w, door_h = p.u(0.16, 0.24) * d, p.u(0.45, 0.65) * h
    p.box((w / 2 + 0.005, 0, door_h / 2), (0.01, door_w, door_h), WOOD, faces="X")
    win = p.u(0.12, 0.18)
    for sign in (-1.0, 1.0):
        p.box((w / 2 + 0.006, sign * d * 0.3, h * 0.6), (0.01, win, win), DARK, faces="X")
    for sign in (-1.0, 1.0):
        p.box((0, sign * (d / 2 + 0.005), h * 0.55), (win, 0.01, win), DARK, faces="Y" if sign > 0 else "y")
    if p.u(0, 1) < 0.6:  # chimney at the back
        p.box((-w / 4, d / 4, h + roof_h * 0.6), (0.1, 0.1, roof_h * 0.8), DARK, faces="xXyYZ")


def _chair(p: _Parts, col) -> None:
    w, d = p.u(0.55, 0.75), p.u(0.55, 0.75)
    seat_z, seat_t = p.u(0.4, 0.55), 0.08
    back_h = p.u(0.45, 0.75)
    leg = 0.06
    legs_col = col if p.u(0, 1) < 0.5 else WOOD
    for x in (-w / 2 + leg, w / 2 - leg):
        for y in (-d / 2 + leg, d / 2 - leg):
            p.box((x, y, seat_z / 2), (leg, leg, seat_z), legs_col, faces="xXyY")
    p.box((0, 0, seat_z + seat_t / 2), (w, d, seat_t), col)
    p.box((-w / 2 + 0.04, 0, seat_z + seat_t + back_h / 2), (0.08, d, back_h), col)


def _bird(p: _Parts, col) -> None:
    L, W, H = p.u(0.45, 0.6), p.u(0.26, 0.34), p.u(0.26, 0.34)
    z0 = 0.35
    p.ellipsoid((0, 0, z0), (L / 2, W / 2, H / 2), col)
    hr = p.u(0.13, 0.17)
    hx, hz = L / 2 - 0.02, z0 + H / 2 + hr * 0.4
    p.ellipsoid((hx, 0, hz), (hr, hr, hr), col)
    p.cone((hx + hr * 0.8, 0, hz - 0.02), 0.05, p.u(0.1, 0.16), DARK, axis=(1, 0, -0.15))
    for s in (-1, 1):
        p.ellipsoid((hx + hr * 0.55, s * hr * 0.7, hz + hr * 0.3), (0.03, 0.03, 0.03), DARK)
        p.ellipsoid((-0.03, s * W / 2, z0 + 0.03), (L * 0.36, 0.03, H * 0.3), tuple(0.8 * c for c in col))
        p.cylinder((0.02, s * 0.06, (z0 - H / 2) / 2 + 0.02), 0.018, z0 - H / 2 + 0.04, DARK)
    p.ellipsoid((-L / 2 - 0.08, 0, z0 + 0.08), (0.16, 0.09, 0.025), col, axis=(-0.5, 0, 0.86))


def _car(p: _Parts, col) -> None:
    L, W, H = p.u(1.0, 1.35), p.u(0.5, 0.62), p.u(0.2, 0.28)
    wheel_r = p.u(0.11, 0.15)
    z_body = wheel_r + H / 2 - 0.02
    p.box((0, 0, z_body), (L, W, H), col)
    cab_l, cab_h = L * p.u(0.45, 0.6), p.u(0.17, 0.25)
    cab_x = -L * p.u(0.02, 0.12)
    p.box((cab_x, 0, z_body + H / 2 + cab_h / 2), (cab_l, W * 0.9, cab_h), col, faces="xXyYZ")
    p.box((cab_x + cab_l / 2 + 0.005, 0, z_body + H / 2 + cab_h / 2), (0.01, W * 0.8, cab_h * 0.75), DARK, faces="X")
    for s in (-1, 1):
        p.box(
            (cab_x, s * (W * 0.45 + 0.005), z_body + H / 2 + cab_h / 2),
            (cab_l * 0.8, 0.01, cab_h * 0.7),
            DARK,
            faces="Y" if s > 0 else "y",
        )
        p.ellipsoid((L / 2, s * W * 0.32, z_body + H * 0.15), (0.02, 0.06, 0.04), (1.0, 0.97, 0.85))
        for x in (L * 0.32, -L * 0.32):
            p.cylinder((x, s * (W / 2), wheel_r), wheel_r, 0.1, DARK, axis=(0, 1, 0))
    p.box((L / 2 + 0.005, 0, z_body - H * 0.15), (0.01, W * 0.4, H * 0.3), DARK, faces="X")


def _tree(p: _Parts, col) -> None:
    trunk_r, trunk_h = p.u(0.07, 0.12), p.u(0.3, 0.55)
    p.cylinder((0, 0, trunk_h / 2), trunk_r, trunk_h, WOOD, caps="")
    if p.u(0, 1) < 0.5:
        r = p.u(0.35, 0.5)
        p.ellipsoid((0, 0, trunk_h + r * 0.8), (r, r, r * p.u(0.9, 1.2)), col)
    else:
        z, r = trunk_h * 0.8, p.u(0.38, 0.5)
        for _ in range(3):
            h = r * 1.1
            p.cone((0, 0, z), r, h, col)
            z += h * 0.5
            r *= 0.75


def _table(p: _Parts, col) -> None:
    w, d, h = p.u(0.9, 1.3), p.u(0.6, 1.0), p.u(0.45, 0.7)
    top_t, leg = 0.07, 0.07
    p.box((0, 0, h - top_t / 2), (w, d, top_t), col)
    for x in (-w / 2 + leg, w / 2 - leg):
        for y in (-d / 2 + leg, d / 2 - leg):
            p.box((x, y, (h - top_t) / 2), (leg, leg, h - top_t), col, faces="xXyY")


def _snowman(p: _Parts, col) -> None:
    r1 = p.u(0.26, 0.32)
    r2, r3 = r1 * p.u(0.7, 0.8), r1 * p.u(0.5, 0.6)
    z1, z2 = r1, 2 * r1 + r2 * 0.8
    z3 = z2 + r2 + r3 * 0.8
    for z, r in ((z1, r1), (z2, r2), (z3, r3)):
        p.ellipsoid((0, 0, z), (r, r, r), col)
    p.cone((r3 * 0.9, 0, z3), 0.04, p.u(0.12, 0.2), (0.95, 0.45, 0.08), axis=(1, 0, 0))
    for s in (-1, 1):
        p.ellipsoid((r3 * 0.85, s * r3 * 0.4, z3 + r3 * 0.3), (0.03, 0.03, 0.03), DARK)
    for dz in (-0.3, 0.0, 0.3):
        p.ellipsoid((r2 * math.cos(dz) * 0.98, 0, z2 + r2 * math.sin(dz)), (0.03, 0.03, 0.03), DARK)
    if p.u(0, 1) < 0.6:
        p.cylinder((0, 0, z3 + r3 * 0.9), r3 * 0.9, 0.03, DARK)
        p.cylinder((0, 0, z3 + r3 * 0.9 + 0.12), r3 * 0.6, 0.24, DARK, caps="t")


def _rocket(p: _Parts, col) -> None:
    r, h = p.u(0.13, 0.19), p.u(0.7, 1.0)
    z0 = 0.12
    p.cylinder((0, 0, z0 + h / 2), r, h, col, caps="b")
    p.cone((0, 0, z0 + h), r, p.u(0.25, 0.4), LIGHT, base=False)
    p.cylinder((r * 0.9, 0, z0 + h * 0.65), 0.07, 0.02, DARK, axis=(1, 0, 0), caps="t")  # a window on the front
    fin_h = p.u(0.2, 0.3)
    for k in range(4):
        a = math.pi / 4 + k * math.pi / 2
        direction = (math.cos(a), math.sin(a), 0.0)
        p.fin((r * direction[0], r * direction[1], z0 - 0.1), p.u(0.15, 0.22), fin_h, GREY, direction=direction)
    p.cone((0, 0, z0 - 0.02), r * 0.7, -0.1, DARK, base=False)


def _cup(p: _Parts, col) -> None:
    r, h = p.u(0.28, 0.38), p.u(0.4, 0.7)
    p.cylinder((0, 0, h / 2), r, h, col, caps="b")
    p.cylinder((0, 0, h / 2 + 0.01), r * 0.9, h - 0.02, tuple(0.75 * c for c in col), caps="b")  # inside
    # The handle: a half ring on the +y side, in the y-z plane.
    hr, tube = h * 0.28, 0.04
    n = p._count(math.pi * hr * 2 * math.pi * tube)
    a = math.pi * (p._rand(n) - 0.5)
    b = 2 * math.pi * p._rand(n)
    ring = torch.stack([torch.zeros_like(a), torch.cos(a), torch.sin(a)], dim=-1)
    normal = torch.cos(b)[:, None] * ring + torch.sin(b)[:, None] * torch.tensor([1.0, 0.0, 0.0])
    pts = ring * hr + normal * tube + torch.tensor([0.0, r - 0.02, h / 2])
    p.add(pts, normal, col)


def _lamp(p: _Parts, col) -> None:
    base_r = p.u(0.2, 0.28)
    pole_h = p.u(0.5, 0.8)
    shade_h, shade_r0 = p.u(0.25, 0.38), p.u(0.3, 0.42)
    p.cylinder((0, 0, 0.03), base_r, 0.06, GREY)
    p.cylinder((0, 0, pole_h / 2), 0.025, pole_h, GREY, caps="")
    p.cylinder((0, 0, pole_h + shade_h / 2 - 0.05), shade_r0, shade_h, col, caps="", radius_top=shade_r0 * p.u(0.5, 0.7))
    p.ellipsoid((0, 0, pole_h - 0.05), (0.07, 0.07, 0.07), (1.0, 0.97, 0.8))


def _fish(p: _Parts, col) -> None:
    L, W, H = p.u(0.6, 0.85), p.u(0.16, 0.24), p.u(0.3, 0.42)
    z0 = 0.4
    p.ellipsoid((0, 0, z0), (L / 2, W / 2, H / 2), col)
    tail = p.u(0.18, 0.26)
    for s in (-1, 1):
        p.fin((-L / 2 + 0.03, 0, z0), tail, tail * 0.9, col, direction=(-1, 0, 0), up=(0, 0, s))
        p.ellipsoid((L * 0.32, s * W * 0.36, z0 + H * 0.12), (0.035, 0.03, 0.035), DARK)
        p.fin((0.05, s * W * 0.35, z0 - H * 0.15), 0.12, 0.1, tuple(0.8 * c for c in col), direction=(-1, 0, 0), up=(0, s, -0.5))
    p.fin((0.1, 0, z0 + H * 0.45), 0.25, p.u(0.1, 0.16), tuple(0.8 * c for c in col), direction=(-1, 0, 0))
    p.ellipsoid((L / 2 - 0.01, 0, z0 - H * 0.08), (0.02, 0.05, 0.015), DARK)  # mouth


def _robot(p: _Parts, col) -> None:
    bw, bd, bh = p.u(0.3, 0.4), p.u(0.4, 0.55), p.u(0.35, 0.5)
    leg_h = p.u(0.25, 0.4)
    head = p.u(0.22, 0.3)
    for s in (-1, 1):
        p.box((0, s * bd * 0.25, leg_h / 2), (0.12, 0.12, leg_h), GREY, faces="xXyYz")
        p.box((0, s * (bd / 2 + 0.05), leg_h + bh * 0.6), (0.08, 0.08, bh * 0.8), GREY)
    p.box((0, 0, leg_h + bh / 2), (bw, bd, bh), col)
    hz = leg_h + bh + head / 2 + 0.02
    p.box((0, 0, hz), (head, head * 1.1, head), LIGHT)
    for s in (-1, 1):
        p.box((head / 2 + 0.005, s * head * 0.25, hz + head * 0.1), (0.01, 0.06, 0.06), DARK, faces="X")
    p.box((head / 2 + 0.005, 0, hz - head * 0.25), (0.01, head * 0.5, 0.03), DARK, faces="X")
    p.box((bw / 2 + 0.005, 0, leg_h + bh * 0.6), (0.01, bd * 0.6, bh * 0.5), LIGHT, faces="X")  # chest panel
    p.cylinder((0, 0, hz + head / 2 + 0.06), 0.015, 0.12, GREY, caps="")
    p.ellipsoid((0, 0, hz + head / 2 + 0.13), (0.035, 0.035, 0.035), (0.95, 0.2, 0.15))


BUILDERS = {
    "mushroom": _mushroom,
    "house": _house,
    "chair": _chair,
    "bird": _bird,
    "car": _car,
    "tree": _tree,
    "table": _table,
    "snowman": _snowman,
    "rocket": _rocket,
    "cup": _cup,
    "lamp": _lamp,
    "fish": _fish,
    "robot": _robot,
}
assert set(BUILDERS) == set(KINDS)


# -- assembly -------------------------------------------------------------------------------------
def shade(colours: torch.Tensor, normals: torch.Tensor, ambient: float) -> torch.Tensor:
    """Baked Lambert lighting: colours [N,3] x (ambient + (1 - ambient) max(0, n . l)), in [0,1]."""
    light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIR), dim=0)
    lambert = (normals @ light).clamp_min(0.0)
    return (colours * (ambient + (1.0 - ambient) * lambert)[:, None]).clamp(0.0, 1.0)


def make_object(kind: str, colour: str, generator: torch.Generator, config: WorldConfig | None = None) -> ShapeObject:
    """Build one object of ``kind`` with main colour ``colour``; proportions and size drawn from ``generator``."""
    config = config or WorldConfig()
    if kind not in BUILDERS:
        raise ValueError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    base = torch.tensor(COLOURS[colour])
    jitter = (torch.rand(3, generator=generator, dtype=torch.float64).float() * 2 - 1) * config.colour_jitter
    col = tuple((base + jitter).clamp(0, 1).tolist())
    size = config.size_range[0] + (config.size_range[1] - config.size_range[0]) * float(
        torch.rand((), generator=generator, dtype=torch.float64)
    )
    parts = _Parts(generator=generator, spacing=config.spacing)
    BUILDERS[kind](parts, col)
    points, normals, colours = parts.tensors()
    # Normalise: bounding box centred on the origin, largest half-extent = size. Then place the point
    # density on the final scale (resample-free: the spacing was chosen at the unnormalised scale).
    lo, hi = points.min(0).values, points.max(0).values
    points = points - (lo + hi) / 2
    scale = size / float(((hi - lo) / 2).max())
    points = points * scale
    rgb = shade(colours, normals, config.ambient)
    n = points.shape[0]
    sigma = config.spacing * config.sigma_factor * scale
    params = {
        "means": points.float(),
        "scales": torch.full((n, 3), math.log(sigma)),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4).clone(),
        "opacities": torch.full((n,), math.log(config.opacity / (1 - config.opacity))),
        "sh0": rgb_to_sh0(rgb).unsqueeze(1).float(),
        "shN": torch.zeros(n, 0, 3),
    }
    return ShapeObject(Gaussians(params, sh_degree=0), kind, colour)


def sample_object(generator: torch.Generator, config: WorldConfig | None = None) -> ShapeObject:
    """A uniformly random kind and colour, then :func:`make_object`."""
    kind = KINDS[int(torch.randint(len(KINDS), (), generator=generator))]
    colour = COLOUR_NAMES[int(torch.randint(len(COLOUR_NAMES), (), generator=generator))]
    return make_object(kind, colour, generator, config)
