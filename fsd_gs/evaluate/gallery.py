"""The HTML gallery: rows = prompts, columns = seeds, methods side by side, each cell an animated turntable.

Static files that open from disk: ``gallery/index.html`` refers to its images by relative paths
(``<prompt-slug>/<method>-seed<N>.webp``: animated WebP written by Pillow; DDIM samples are still PNGs).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fsd_gs.evaluate.report import SetResult, backbone_label, method_label, row_order

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
section.prompt { border-top: 1px solid #ccc; padding: 0.6em 0; }
section.prompt > h2 { font-size: 1.15em; margin: 0.2em 0 0.5em; }
.methods { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
.method { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 0.5em; }
.method h3 { font-size: 0.95em; margin: 0 0 0.4em; }
.cells { display: flex; flex-wrap: wrap; gap: 4px; }
figure { margin: 0; text-align: center; font-size: 0.75em; color: #555; }
figure img { width: 128px; height: 128px; image-rendering: pixelated; display: block; background: #fff; }
dl.metrics { display: grid; grid-template-columns: auto auto; gap: 0 0.8em; font-size: 0.8em; margin: 0.5em 0 0; }
dl.metrics dt { color: #666; } dl.metrics dd { margin: 0; font-variant-numeric: tabular-nums; }
figure.janus img { outline: 3px solid #d22; outline-offset: -3px; }
figure .janus-badge { color: #fff; background: #d22; border-radius: 3px; padding: 0 0.3em; font-weight: bold; }
figure .reads { font-family: ui-monospace, monospace; letter-spacing: 0.05em; }
figure .reads .wrong { color: #d22; font-weight: bold; }
"""

VIEW_LETTERS = {"front": "F", "side": "S", "back": "B", "overhead": "O"}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[V,3,H,W] in [0,1] -> [V,H,W,3] uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_animation(views: torch.Tensor, path: Path, frame_ms: int = 80) -> Path:
    """An endlessly looping animated WebP of views [V,3,H,W] in [0,1] (one frame per view, ``frame_ms`` each)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(f) for f in to_uint8(views)]
    frames[0].save(
        path,
        format="WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=frame_ms,
        loop=0,
        lossless=False,
        quality=90,
        method=4,
    )
    return path


def save_still(image: torch.Tensor, path: Path) -> Path:
    """A PNG of one image [3,H,W] in [0,1]."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image[None])[0]).save(path)
    return path


def _metrics(result: SetResult, quality_name: str) -> list[tuple[str, str]]:
    rows = [(quality_name, f"{result.quality:.2f}")]
    if result.guidance_scale is not None:
        rows.append(("CFG", f"{result.guidance_scale:g}"))
    if result.inception_score is not None:
        rows.append(("IS", f"{result.inception_score:.2f}"))
    if result.cross_fid is not None:
        rows.append(("CROSS-FID", f"{result.cross_fid.value:.1f}"))
    if result.colour_entropy is not None:
        rows.append(("colour entropy", f"{result.colour_entropy:.2f}"))
    if result.pairwise_distance is not None:
        rows.append(("pairwise distance", f"{result.pairwise_distance:.2f}"))
    if result.view_accuracy is not None:
        rows.append(("view accuracy", f"{result.view_accuracy:.2f}"))
    if result.janus_rate is not None:
        rows.append(("Janus", f"{100 * result.janus_rate:.0f}% ({len(result.janus_seeds)}/{len(result.seeds)})"))
    return rows


def _reads(result: SetResult, seed: int) -> tuple[str, str]:
    """The seed's view reads as (caption HTML: the clear cameras' letters, wrong ones marked; hover text: every
    camera "azimuth: read"), or ("", "") without reads."""
    from fsd_gs.evaluate.consistency import EXPECTED_VIEWS

    reads = result.view_reads.get(seed)
    if not reads:
        return "", ""
    hover = "view read per camera: " + ", ".join(f"{a:g}°: {r}" for a, r in zip(result.azimuths, reads))
    if result.clear_azimuths is None:
        return "", hover
    letters = []
    for azimuth, expected in zip(result.clear_azimuths, EXPECTED_VIEWS):
        read = reads[result.azimuths.index(azimuth)]
        cls = "" if read == expected else " class='wrong'"
        letters.append(
            f"<span{cls} title='{azimuth:g}°: {html.escape(read)} (expected {expected})'>{VIEW_LETTERS.get(read, '?')}</span>"
        )
    return "<div class='reads'>" + "".join(letters) + "</div>", hover


def _cell(result: SetResult, seed: int) -> str:
    src = result.media.get(seed)
    word = {"ddim": "sample", "truth": "object"}.get(result.method, "seed")
    label = f"{word} {seed}"
    if result.seed_colours:
        label += f" · {result.seed_colours[seed]}"
    alt = f"{result.prompt} - {method_label(result.method)} - {label}"
    reads, hover = _reads(result, seed)
    janus = seed in result.janus_seeds
    title = f' title="{html.escape(hover)}"' if hover else ""
    img = f'<img src="{html.escape(src)}" alt="{html.escape(alt)}"{title}>' if src else "<div>(no image)</div>"
    badge = " <span class='janus-badge' title='the back camera (180°) reads front'>JANUS</span>" if janus else ""
    cls = " class='janus'" if janus else ""
    return f"<figure{cls}>{img}<figcaption>{html.escape(label)}{badge}{reads}</figcaption></figure>"


def write_index(
    folder: Path, results: Sequence[SetResult], quality_names: dict[str, str], title: str, notes: Sequence[str] = ()
) -> Path:
    """Write ``folder/index.html`` for ``results`` (their ``media`` paths are relative to ``folder``)."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    prompts = sorted({(r.prompt, r.model) for r in results})
    for prompt, model in prompts:
        row = sorted((r for r in results if (r.prompt, r.model) == (prompt, model)), key=lambda r: row_order(r.method))
        parts.append(
            f"<section class='prompt'><h2>{html.escape(prompt)} <small>({html.escape(backbone_label(model))})"
            "</small></h2><div class='methods'>"
        )
        for r in row:
            metrics = "".join(
                f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _metrics(r, quality_names.get(model, "quality"))
            )
            cells = "".join(_cell(r, s) for s in r.seeds)
            title = html.escape(method_label(r.method))
            parts.append(
                f"<div class='method' data-method='{html.escape(r.method)}'><h3>{title}</h3>"
                f"<div class='cells'>{cells}</div><dl class='metrics'>{metrics}</dl></div>"
            )
        parts.append("</div></section>")
    parts.append("</body></html>")
    path = folder / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def media_name(prompt_slug: str, method: str, seed: int, still: bool = False) -> str:
    """The relative path of one cell's image inside gallery/."""
    return f"{prompt_slug}/{method}-seed{seed}.{'png' if still else 'webp'}"


def gallery_notes(settings: dict[str, Any]) -> list[str]:
    return [
        f"Each cell turns once around the asset: {settings['views']} views at elevation {settings['elevation']:g} deg, "
        "the same cameras for every method. Metrics of the row beside each method; evaluation.md has the table.",
        "Under each cell of a prompt with a front: the view read at azimuth 0/90/180/270 (F front, S side, B back, "
        "O overhead; should be F S B S, wrong ones in red); hover an image for every camera's read. A red frame and "
        "JANUS mark seeds whose back camera reads front.",
    ]
