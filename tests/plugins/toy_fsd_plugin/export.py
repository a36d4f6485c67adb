"""``xyz``: the Gaussians' centres as an ASCII point cloud, one "x y z" line each (what point-cloud tools read)."""

from __future__ import annotations

from fsd_gs.export.base import ExportFormat


def xyz_bytes(gaussians, options=None) -> bytes:
    """One line "x y z" per Gaussian centre (float32 printed with 9 significant digits)."""
    means = gaussians.params["means"].detach().cpu().float().tolist()
    return "".join(f"{x:.9g} {y:.9g} {z:.9g}\n" for x, y, z in means).encode()


XYZ = ExportFormat("xyz", ".xyz", xyz_bytes, "the Gaussians' centres as an ASCII point cloud")
