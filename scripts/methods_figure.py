"""The paper's Fig. 3 on the built-in shapes prior: every method x every seed from the same initial noise.

    python scripts/methods_figure.py --out outputs/methods.png --seed 0 1 2 3 --steps 100

Writes OUT.png (rows: methods, columns: seeds; the seed's noise is the same in every row) and OUT.md, a
markdown table for BENCHMARKS.md: quality = the shapes judge's agreement with the prompt (its kind, and its
colour when the prompt names one), diversity = the entropy of the judge's colours over the seeds / log(#colours)
and the mean pairwise distance of the seeds' judge features. Prints the table. CPU, offline.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from fsd_gs.errors import require, run_cli
from fsd_gs.image2d import METHOD_DEFAULTS, Image2DConfig, generate, to_uint8


@dataclass
class FigureConfig:
    """Fig. 3 of the paper on the shapes prior: a grid of methods x seeds and a quality / diversity table."""

    out: Path = Path("outputs/methods_figure.png")
    """The image to write; the table goes next to it with the suffix .md."""
    prompt: str = "a mushroom"
    """A shapes-world prompt; without a colour word the colours of the seeds measure diversity."""
    methods: tuple[str, ...] = ("ddim", "fsd", "sds", "nfsd", "csd", "vsd")
    """Rows of the grid, in order."""
    seed: tuple[int, ...] = (0, 1, 2, 3)
    """Columns of the grid."""
    steps: Optional[int] = None
    """Iterations of the score-distillation methods (None: Tab. 3's 500); DDIM keeps its 50 steps."""
    guidance_scale: Optional[float] = None
    """One CFG scale for every method (None: each method's Tab. 3 value)."""
    device: str = "cpu"
    """cpu, cuda or auto."""
    progress: bool = False
    """Show a progress bar per method."""


def judge_table(images: dict[str, torch.Tensor], prompt: str) -> tuple[list[dict], str]:
    """Per method: quality (judge agreement with the prompt's kind and colour) and diversity over the seeds."""
    from fsd_gs.shapes.judge import load_judge
    from fsd_gs.shapes.world import COLOUR_NAMES, KINDS

    judge = load_judge()
    words = prompt.lower().replace(",", " ").split()
    kind = next((w for w in words if w in KINDS), None)
    colour = next((w for w in words if w in COLOUR_NAMES), None)
    rows = []
    for method, batch in images.items():
        with torch.no_grad():
            pred = judge.predict(batch)
            feats = judge.features(batch)
        ok = torch.ones(len(batch), dtype=torch.bool)
        if kind is not None:
            ok &= pred["kind"] == KINDS.index(kind)
        if colour is not None:
            ok &= pred["colour"] == COLOUR_NAMES.index(colour)
        counts = torch.bincount(pred["colour"], minlength=len(COLOUR_NAMES)).double()
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * p.log()).sum()) / math.log(len(COLOUR_NAMES))
        spread = float(torch.pdist(feats).mean()) if len(batch) > 1 else 0.0
        rows.append(
            {
                "method": method,
                "quality": float(ok.float().mean()),
                "colour_entropy": entropy,
                "feature_distance": spread,
                "colours": [COLOUR_NAMES[i] for i in pred["colour"].tolist()],
            }
        )
    lines = [
        "| method | quality (judge agrees) | colour entropy / log 8 | mean pairwise judge-feature distance | colours |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['quality']:.2f} | {r['colour_entropy']:.2f} | {r['feature_distance']:.2f} | "
        f"{' '.join(r['colours'])} |"
        for r in rows
    ]
    return rows, "\n".join(lines)


def save_grid(images: dict[str, torch.Tensor], path: Path, gap: int = 4, label_width: int = 48) -> None:
    """Rows of images [S,3,H,W] per method, with the method's name on the left, white gaps."""
    from PIL import Image, ImageDraw

    rows = list(images.items())
    n, _, h, w = rows[0][1].shape
    canvas = Image.new("RGB", (label_width + n * (w + gap), len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (method, batch) in enumerate(rows):
        y = r * (h + gap)
        draw.text((4, y + h // 2 - 6), method, fill="black")
        for i, pixels in enumerate(to_uint8(batch)):
            canvas.paste(Image.fromarray(pixels), (label_width + i * (w + gap), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def run(argv: Sequence[str]) -> int:
    import tyro

    from fsd_gs.device import resolve_device
    from fsd_gs.prior.factory import load_prior

    cfg = tyro.cli(FigureConfig, args=list(argv), description=FigureConfig.__doc__)
    require(len(cfg.methods) > 0, "--methods needs at least one method")
    for method in cfg.methods:
        require(method in METHOD_DEFAULTS, f"--methods: {method!r} is not one of {', '.join(METHOD_DEFAULTS)}")
    prior = load_prior("shapes", device=resolve_device(cfg.device))
    images: dict[str, torch.Tensor] = {}
    timings = {}
    for method in cfg.methods:
        one = Image2DConfig(
            prompt=cfg.prompt,
            method=method,
            seed=cfg.seed,
            model="shapes",
            device=cfg.device,
            progress=cfg.progress,
            guidance_scale=cfg.guidance_scale,
            steps=None if method == "ddim" else cfg.steps,
        )
        one.validate()
        start = time.perf_counter()
        images[method] = generate(one, prior)
        timings[method] = time.perf_counter() - start
        print(f"{method}: {timings[method]:.1f} s", file=sys.stderr)
    save_grid(images, cfg.out)
    _, table = judge_table(images, cfg.prompt)
    settings = {
        m: dataclasses.asdict(
            Image2DConfig(
                prompt=cfg.prompt, method=m, steps=None if m == "ddim" else cfg.steps, guidance_scale=cfg.guidance_scale
            ).settings()
        )
        for m in cfg.methods
    }
    note = (
        f'\n\nShapes prior, prompt "{cfg.prompt}", seeds {list(cfg.seed)}; per method (steps, CFG, lr): '
        + "; ".join(f"{m} ({s['steps']}, {s['guidance_scale']}, {s['lr']}, {timings[m]:.0f} s)" for m, s in settings.items())
        + f". Grid: {cfg.out.name}.\n"
    )
    cfg.out.with_suffix(".md").write_text(table + note)
    print(table + note)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(run))
