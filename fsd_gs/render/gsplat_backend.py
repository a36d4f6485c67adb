"""The CUDA backend: a thin wrapper around ``gsplat.rasterization`` (imported lazily), and gsplat's one-off build.

gsplat 1.5.3 without a prebuilt ``gsplat.csrc`` JIT-builds its CUDA extension when ``gsplat.cuda._backend`` is first
imported (on the first CUDA call), with torch.utils.cpp_extension into ``$TORCH_EXTENSIONS_DIR/gsplat_cuda`` (or
torch's per-user default). That import deletes the build folder's lock and, when no ``gsplat_cuda.so`` is there yet,
the whole folder: several processes starting at once on a fresh machine (batch workers sharing a GPU) destroy each
other's objects ("Could not open output file ... .cuda.o.d"). :func:`ensure_gsplat_built` makes that first import
under an exclusive ``fcntl.flock`` on a file next to the build folder, so the build happens once per machine and
every other process waits for it, then loads the built extension.
"""

from __future__ import annotations

import fcntl
import sys
import time
from pathlib import Path
from typing import Mapping

import torch

from fsd_gs.render.config import RenderConfig

EXTENSION = "gsplat_cuda"
"""The name gsplat builds its extension under (its folder in the torch extensions root)."""
BUILD_TYPICAL = "a few minutes"
"""How long gsplat's first CUDA build takes (gsplat's own estimate; printed while it builds or is waited for)."""

_built = False


def gsplat_build_folder() -> Path:
    """Where torch.utils.cpp_extension builds gsplat's extension ($TORCH_EXTENSIONS_DIR or torch's default root)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(EXTENSION, verbose=False))


def gsplat_needs_build() -> bool:
    """True when gsplat has no prebuilt extension and its JIT build has not run on this machine yet."""
    import importlib.util

    if importlib.util.find_spec("gsplat") is None or importlib.util.find_spec("gsplat.csrc") is not None:
        return False
    return not (gsplat_build_folder() / f"{EXTENSION}.so").is_file()


def ensure_gsplat_built() -> None:
    """Import gsplat's CUDA backend (building it the first time on a machine) under a file lock; free after the first
    call of a process. Prints one line when it builds or waits for another process's build."""
    global _built
    if _built:
        return
    lock_path = gsplat_build_folder().parent / f"{EXTENSION}.fsd_gs.lock"
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"gsplat: waiting for another process that builds its CUDA extension ({BUILD_TYPICAL}; lock {lock_path})",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            building = gsplat_needs_build()
            if building:
                print(
                    f"gsplat: building its CUDA extension once for this machine ({BUILD_TYPICAL}) in {gsplat_build_folder()}",
                    file=sys.stderr,
                    flush=True,
                )
            started = time.perf_counter()
            import gsplat.cuda._backend  # noqa: F401  (the build or load happens here)

            if building:
                print(f"gsplat: built in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    _built = True


def rasterize_gsplat(
    params: Mapping[str, torch.Tensor] | torch.nn.ParameterDict,
    sh_degree: int,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    backgrounds: torch.Tensor,
    config: RenderConfig,
    with_depth: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Render raw Gaussian parameters (log scales, logit opacities, SH) with gsplat.

    Args:
        params: the Gaussians' parameter dict (shapes in ``fsd_gs.gaussians``), or K sets of the same count stacked
            along a leading dimension ([K,N,3] means, ...: gsplat's batch dimension, one set per camera batch).
        sh_degree: degree to render with (<= the stored degree).
        viewmats [B,4,4], Ks [B,3,3], backgrounds [B,3] ([K,B,...] with K sets), all on the Gaussians' CUDA device.
        with_depth: render gsplat's "RGB+ED" mode: a 4th channel of expected depth
            sum_i w_i z_i / max(alpha, 1e-10) (0 where alpha = 0), not composited over the background.
    Returns:
        colors [B,H,W,3] ([B,H,W,4] with depth; not clamped above), alphas [B,H,W,1], and gsplat's meta dict, whose
        "means2d" [B,N,2] (or [nnz,2] when packed) is the screen-space tensor to read gradients from (a leading [K]
        on each with K sets).
    """
    from gsplat import rasterization

    ensure_gsplat_built()
    coeffs = torch.cat([params["sh0"], params["shN"]], dim=-2)  # [...,N,bases,3]
    colors, alphas, meta = rasterization(
        means=params["means"],
        quats=params["quats"],  # gsplat normalises them itself
        scales=torch.exp(params["scales"]),
        opacities=torch.sigmoid(params["opacities"]),
        colors=coeffs,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        near_plane=config.near_plane,
        far_plane=config.far_plane,
        radius_clip=config.radius_clip,
        eps2d=config.eps2d,
        sh_degree=sh_degree,
        packed=config.packed,
        backgrounds=None,  # composited below: gsplat 1.5.3 rejects backgrounds [B,3] when packed=True
        render_mode="RGB+ED" if with_depth else "RGB",
        absgrad=config.absgrad,
        rasterize_mode="classic",
    )
    # Exactly gsplat's own compositing (pix_out + T_final * background, with T_final = 1 - alpha).
    rgb = colors[..., :3] + (1.0 - alphas) * backgrounds[..., None, None, :]
    colors = torch.cat([rgb, colors[..., 3:]], dim=-1) if with_depth else rgb
    return colors, alphas, meta
