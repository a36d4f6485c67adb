"""fsd_gs: text-to-3D Gaussian Splatting with Flow Score Distillation."""

from fsd_gs.version import __version__

__all__ = ["__version__"]
