"""The evaluation's results as data, and as the paper's table (markdown) and JSON.

One :class:`SetResult` per (prompt, backbone, method) -- the methods being the trained runs (fsd, sds, ...)
plus, for reference, "ddim" (the prior's own DDIM samples, the paper's "DDIM images" row) and "truth"
(the shapes world's own objects). :func:`summarise` averages them over prompts into the paper's rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from fsd_gs.evaluate.metrics import (
    CrossFID, colour_entropy, cross_fid, inception_score, majority, mean_pairwise_distance, mean_std,
)
from fsd_gs.evaluate.scorers import ViewScores

FORMAT = "fsd_gs.evaluate/1"
REFERENCE_ORDER = ("truth", "ddim", "sds", "fsd", "fsd-surface")
"""Row order in tables: references first, then SDS before FSD as in the paper; other methods after, by name."""
LABELS = {"truth": "world objects (truth)", "ddim": "DDIM images", "sds": "SDS", "fsd": "FSD",
          "fsd-surface": "FSD, surface noise"}


def method_label(method: str) -> str:
    return LABELS.get(method, method.upper())


def backbone_label(model: str) -> str:
    return "shapes (built-in)" if model == "shapes" else model


def row_order(method: str) -> tuple[int, str]:
    return (REFERENCE_ORDER.index(method), "") if method in REFERENCE_ORDER else (len(REFERENCE_ORDER), method)


@dataclass
class SetResult:
    """Figures of one prompt x backbone x method (one asset per seed, or one sample per seed for "ddim").

    Attributes:
        quality: mean over all views of all seeds; ``quality_per_seed`` per seed.
        inception_score: IS over all views of all seeds (None without a classifier).
        cross_fid: FID between the first and second half of the seeds (None for "ddim" / < 2 seeds).
        seed_colours, colour_entropy: judged colour per seed (majority over views) and the entropy of those
            colours / log(#colours) (shapes only).
        pairwise_distance: mean distance between the seeds' mean features.
        sources: seed -> where the asset came from; media: seed -> gallery file (relative to gallery/).
        guidance_scale: the CFG scale the seeds were made with (None: world objects, or runs that differ).
    """

    prompt: str
    model: str
    method: str
    seeds: list[int]
    views_per_seed: int
    quality: float
    quality_per_seed: dict[int, float]
    inception_score: Optional[float]
    cross_fid: Optional[CrossFID]
    pairwise_distance: Optional[float]
    seed_colours: Optional[dict[int, str]] = None
    colour_entropy: Optional[float] = None
    sources: dict[int, str] = field(default_factory=dict)
    media: dict[int, str] = field(default_factory=dict)
    guidance_scale: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["cross_fid"] = None if self.cross_fid is None else {**dataclasses.asdict(self.cross_fid),
                                                                  "rank_deficient": self.cross_fid.rank_deficient}
        return data


def summarise_set(prompt: str, model: str, method: str, scores: dict[int, ViewScores], n_colours: int,
                  with_cross_fid: bool = True, sources: dict[int, str] | None = None,
                  guidance_scale: Optional[float] = None) -> SetResult:
    """The figures of one prompt x backbone x method from the view scores of each seed."""
    seeds = sorted(scores)
    all_probs = [scores[s].probs for s in seeds]
    colours = None
    if all(scores[s].colours for s in seeds):
        colours = {s: majority(scores[s].colours) for s in seeds}
    return SetResult(
        prompt=prompt, model=model, method=method, seeds=seeds,
        views_per_seed=int(scores[seeds[0]].quality.shape[0]),
        quality=float(np.concatenate([scores[s].quality for s in seeds]).mean()),
        quality_per_seed={s: float(scores[s].quality.mean()) for s in seeds},
        inception_score=None if any(p is None for p in all_probs) else inception_score(np.concatenate(all_probs)),
        cross_fid=cross_fid({s: scores[s].features for s in seeds}) if with_cross_fid else None,
        pairwise_distance=mean_pairwise_distance(np.stack([scores[s].features.mean(axis=0) for s in seeds])),
        seed_colours=colours,
        colour_entropy=None if colours is None else colour_entropy(list(colours.values()), n_colours),
        sources=dict(sources or {}),
        guidance_scale=guidance_scale,
    )


@dataclass
class SummaryRow:
    """One row of the paper's table: a backbone x method, mean and std over its prompts."""

    model: str
    method: str
    prompts: int
    seeds: int
    figures: dict[str, tuple[Optional[float], Optional[float], int]]
    """name -> (mean, std, count) over prompts, for quality, inception_score, cross_fid, colour_entropy,
    pairwise_distance."""
    guidance_scales: list[float] = field(default_factory=list)
    """The CFG scales its prompts were made with (one value unless the runs differ; none for world objects)."""


FIGURES = ("quality", "inception_score", "cross_fid", "colour_entropy", "pairwise_distance")


def _figure(result: SetResult, name: str) -> Optional[float]:
    if name == "cross_fid":
        return None if result.cross_fid is None else result.cross_fid.value
    return getattr(result, name)


def summarise(results: Sequence[SetResult]) -> list[SummaryRow]:
    """Rows per (backbone, method) in table order, each averaged over its prompts."""
    keys = sorted({(r.model, r.method) for r in results}, key=lambda k: (k[0], row_order(k[1])))
    rows = []
    for model, method in keys:
        part = [r for r in results if (r.model, r.method) == (model, method)]
        rows.append(SummaryRow(model, method, len(part), max(len(r.seeds) for r in part),
                               {name: mean_std([_figure(r, name) for r in part]) for name in FIGURES},
                               sorted({r.guidance_scale for r in part if r.guidance_scale is not None})))
    return rows


# -- markdown -------------------------------------------------------------------------------------
def _pm(mean: Optional[float], std: Optional[float], digits: int = 2) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _num(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cfg(scales: Sequence[Optional[float]]) -> str:
    """CFG scales as a table cell: "2.5", "2.5/7.5" when they differ, "-" when there are none."""
    return "/".join(f"{s:g}" for s in sorted({s for s in scales if s is not None})) or "-"


def markdown(results: Sequence[SetResult], missing: Sequence[dict[str, str]], settings: dict[str, Any],
             scorer_notes: dict[str, dict[str, Any]]) -> str:
    """The evaluation as markdown: the paper's table, the per-prompt table, how it was measured, what is missing."""
    has_shapes = any(r.model == "shapes" for r in results)
    lines = [
        "# Evaluation",
        "",
        f"{len({r.prompt for r in results})} prompt(s); every asset rendered from the same {settings['views']} cameras "
        f"(orbit at elevation {settings['elevation']:g} deg, distance {settings['distance']:g}, fovy {settings['fovy']:g} deg). "
        "Mean ± std over prompts (std with ddof 0). Quality: judge agreement (share of views whose judged kind, and colour when "
        "the prompt names one, match the prompt) for the shapes prior, CLIP score (100 x cosine) otherwise. IS over all views "
        "of a prompt. CROSS-FID: FID between the views of the first and the second half of the seeds (higher = more diverse).",
        "",
    ]
    header = "| backbone | method | CFG | prompts x seeds | quality | IS | CROSS-FID |"
    sep = "| --- | --- | --- | --- | --- | --- | --- |"
    if has_shapes:
        header += " colour entropy | pairwise feature distance |"
        sep += " --- | --- |"
    lines += [header, sep]
    for row in summarise(results):
        f = row.figures
        cells = [backbone_label(row.model), method_label(row.method), _cfg(row.guidance_scales),
                 f"{row.prompts} x {row.seeds}", _pm(*f["quality"][:2]), _pm(*f["inception_score"][:2]),
                 _pm(*f["cross_fid"][:2], digits=1)]
        if has_shapes:
            cells += [_pm(*f["colour_entropy"][:2]), _pm(*f["pairwise_distance"][:2])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Per prompt", "",
              "| prompt | backbone | method | CFG | seeds | quality | IS | CROSS-FID (samples a/b, dim) | colours per seed | "
              "colour entropy | pairwise distance |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: (r.prompt, r.model, row_order(r.method))):
        cf = r.cross_fid
        cf_text = "-" if cf is None else f"{cf.value:.1f} ({cf.n_a}/{cf.n_b}, {cf.feature_dim})"
        colours = "-" if r.seed_colours is None else " ".join(r.seed_colours[s] for s in r.seeds)
        cells = [r.prompt, backbone_label(r.model), method_label(r.method), _cfg([r.guidance_scale]), str(len(r.seeds)),
                 f"{r.quality:.2f}", _num(r.inception_score), cf_text, colours, _num(r.colour_entropy),
                 _num(r.pairwise_distance)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## How it was measured", ""]
    for model, note in scorer_notes.items():
        classifier = note["classifier"] or "none (IS not computed)"
        lines.append(f"- {backbone_label(model)}: quality = {note['quality']}; IS classifier = {classifier}; "
                     f"features = {note['features']}.")
    cfs = [r.cross_fid for r in results if r.cross_fid is not None]
    if cfs:
        deficient = sum(cf.rank_deficient for cf in cfs)
        dims = "/".join(sorted({str(c.feature_dim) for c in cfs}))
        lines.append(f"- CROSS-FID from {min(c.n_a for c in cfs)}-{max(c.n_b for c in cfs)} feature vectors per half, "
                     f"feature size {dims}; {deficient} of {len(cfs)} estimates have fewer samples than dimensions "
                     "(rank-deficient covariances: compare them only with each other, same views and seeds).")
    if any(r.method == "ddim" for r in results):
        lines.append(f"- DDIM images: {settings['ddim_samples']} samples per prompt, {settings['ddim_steps']} DDIM steps, "
                     "at the FSD runs' CFG (what FSD distils towards; else the first method's, or --ddim-guidance), "
                     "view-dependent prompts; "
                     "no CROSS-FID (independent samples).")
    if any(r.method == "truth" for r in results):
        lines.append("- World objects (truth): the shapes world's own objects of the prompt's kind "
                     "(random colour when the prompt names none), rendered from the same cameras.")
    if missing:
        lines += ["", f"## Missing ({len(missing)})", ""]
        lines += [f"- {m['id']}: {m['reason']}" for m in missing]
    return "\n".join(lines) + "\n"


def to_json(results: Sequence[SetResult], missing: Sequence[dict[str, str]], settings: dict[str, Any],
            scorer_notes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    summary = [{"model": r.model, "method": r.method, "prompts": r.prompts, "seeds": r.seeds,
                "guidance_scales": r.guidance_scales,
                **{name: {"mean": m, "std": s, "count": n} for name, (m, s, n) in r.figures.items()}}
               for r in summarise(results)]
    return {"format": FORMAT, "settings": settings, "scorers": scorer_notes, "summary": summary,
            "results": [r.to_json() for r in results], "missing": list(missing)}
