"""fsd_gs: text-to-3D Gaussian Splatting with Flow Score Distillation."""

__version__ = "0.1.0"
