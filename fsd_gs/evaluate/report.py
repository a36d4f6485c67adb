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

from fsd_gs.evaluate.consistency import EXPECTED_VIEWS, add_confusion, consistency, empty_confusion, has_front
from fsd_gs.evaluate.metrics import (
    CrossFID,
    colour_entropy,
    cross_fid,
    inception_score,
    majority,
    mean_pairwise_distance,
    mean_std,
)
from fsd_gs.evaluate.scorers import ViewScores

FORMAT = "fsd_gs.evaluate/1"
REFERENCE_ORDER = ("truth", "ddim", "sds", "sds-perpneg", "fsd", "fsd-perpneg", "fsd-surface", "fsd-surface-perpneg")
"""Row order in tables: references first, then SDS before FSD as in the paper; other methods after, by name."""
LABELS = {
    "truth": "world objects (truth)",
    "ddim": "DDIM images",
    "sds": "SDS",
    "fsd": "FSD",
    "fsd-surface": "FSD, surface noise",
    "sds-perpneg": "SDS, Perp-Neg",
    "fsd-perpneg": "FSD, Perp-Neg",
    "fsd-surface-perpneg": "FSD, surface noise, Perp-Neg",
}


def method_label(method: str) -> str:
    return LABELS.get(method, method.upper())


def backbone_label(model: str) -> str:
    from fsd_gs.prior.detectors import is_shapes_world

    return f"{model} (built-in)" if is_shapes_world(model) else model


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
        view_reads: seed -> the view read of each camera (:mod:`fsd_gs.evaluate.consistency`; empty without reads).
        has_front: the prompt's object has a front (:func:`~fsd_gs.evaluate.consistency.has_front`); only then are
            the consistency figures below set.
        view_accuracy: mean over seeds of the share of clear cameras read right; ``view_accuracy_per_seed`` per seed.
        janus_rate: share of seeds whose back camera (180 deg) reads "front"; ``janus_seeds`` lists them.
        confusion: expected view -> read view -> count over the clear cameras of all seeds.
        clear_azimuths: the azimuths of the cameras standing in for 0/90/180/270 deg.
        azimuths: every camera's azimuth (degrees), in the order of ``view_reads``.
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
    view_reads: dict[int, list[str]] = field(default_factory=dict)
    has_front: bool = False
    view_accuracy: Optional[float] = None
    view_accuracy_per_seed: dict[int, float] = field(default_factory=dict)
    janus_rate: Optional[float] = None
    janus_seeds: list[int] = field(default_factory=list)
    confusion: Optional[dict[str, dict[str, int]]] = None
    clear_azimuths: Optional[list[float]] = None
    azimuths: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["cross_fid"] = (
            None
            if self.cross_fid is None
            else {**dataclasses.asdict(self.cross_fid), "rank_deficient": self.cross_fid.rank_deficient}
        )
        return data


def _consistency_fields(
    prompt: str, model: str, scores: dict[int, ViewScores], azimuths: Optional[Sequence[float]]
) -> dict[str, Any]:
    """SetResult's consistency fields; empty when a seed has no view reads or they do not match the cameras."""
    seeds = sorted(scores)
    reads = {s: scores[s].views for s in seeds}
    if azimuths is None or any(r is None or len(r) != len(azimuths) for r in reads.values()):
        return {}
    fields: dict[str, Any] = {
        "view_reads": {s: list(r or []) for s, r in reads.items()},
        "has_front": has_front(prompt, model),
        "azimuths": [float(a) % 360.0 for a in azimuths],
    }
    if fields["has_front"]:
        per_seed = {s: consistency(fields["view_reads"][s], azimuths) for s in seeds}
        confusion = empty_confusion()
        for c in per_seed.values():
            add_confusion(confusion, c.confusion)
        fields.update(
            view_accuracy=float(np.mean([c.view_accuracy for c in per_seed.values()])),
            view_accuracy_per_seed={s: c.view_accuracy for s, c in per_seed.items()},
            janus_rate=float(np.mean([c.janus for c in per_seed.values()])),
            janus_seeds=[s for s, c in per_seed.items() if c.janus],
            confusion=confusion,
            clear_azimuths=per_seed[seeds[0]].clear_azimuths,
        )
    return fields


def summarise_set(
    prompt: str,
    model: str,
    method: str,
    scores: dict[int, ViewScores],
    n_colours: int,
    with_cross_fid: bool = True,
    sources: dict[int, str] | None = None,
    guidance_scale: Optional[float] = None,
    azimuths: Optional[Sequence[float]] = None,
) -> SetResult:
    """The figures of one prompt x backbone x method from the view scores of each seed; with the cameras'
    ``azimuths`` (degrees, one per view) and view reads in the scores also its 3D consistency."""
    seeds = sorted(scores)
    probs = [p for s in seeds if (p := scores[s].probs) is not None]
    named = {s: c for s in seeds if (c := scores[s].colours)}
    colours = {s: majority(c) for s, c in named.items()} if len(named) == len(seeds) else None
    return SetResult(
        prompt=prompt,
        model=model,
        method=method,
        seeds=seeds,
        views_per_seed=int(scores[seeds[0]].quality.shape[0]),
        quality=float(np.concatenate([scores[s].quality for s in seeds]).mean()),
        quality_per_seed={s: float(scores[s].quality.mean()) for s in seeds},
        inception_score=inception_score(np.concatenate(probs)) if len(probs) == len(seeds) else None,
        cross_fid=cross_fid({s: scores[s].features for s in seeds}) if with_cross_fid else None,
        pairwise_distance=mean_pairwise_distance(np.stack([scores[s].features.mean(axis=0) for s in seeds])),
        seed_colours=colours,
        colour_entropy=None if colours is None else colour_entropy(list(colours.values()), n_colours),
        sources=dict(sources or {}),
        guidance_scale=guidance_scale,
        **_consistency_fields(prompt, model, scores, azimuths),
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
    pairwise_distance, view_accuracy and janus_rate (the last two over ``front_prompts`` only)."""
    guidance_scales: list[float] = field(default_factory=list)
    """The CFG scales its prompts were made with (one value unless the runs differ; none for world objects)."""
    front_prompts: list[str] = field(default_factory=list)
    """The prompts with a front whose view accuracy and Janus rate the row averages."""
    confusion: Optional[dict[str, dict[str, int]]] = None
    """Expected view -> read view -> count over the clear cameras of every seed of ``front_prompts``."""


FIGURES = ("quality", "inception_score", "cross_fid", "colour_entropy", "pairwise_distance", "view_accuracy", "janus_rate")


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
        fronts = [r for r in part if r.confusion is not None]
        confusion = None
        if fronts:
            confusion = empty_confusion()
            for r in fronts:
                add_confusion(confusion, r.confusion or {})
        rows.append(
            SummaryRow(
                model,
                method,
                len(part),
                max(len(r.seeds) for r in part),
                {name: mean_std([_figure(r, name) for r in part]) for name in FIGURES},
                sorted({r.guidance_scale for r in part if r.guidance_scale is not None}),
                sorted({r.prompt for r in fronts}),
                confusion,
            )
        )
    return rows


def reference_check(row: SummaryRow, accuracy: float = 0.95, janus: float = 0.0) -> str:
    """One line on the truth row's consistency: the view reader must read the world's own objects right."""
    acc, rate = row.figures["view_accuracy"][0], row.figures["janus_rate"][0]
    ok = acc is not None and rate is not None and acc >= accuracy and rate <= janus
    verdict = (
        "the view reader is calibrated"
        if ok
        else f"WARNING: below {accuracy:g} / above {100 * janus:g}%: the view reader misreads the world's own objects, "
        "so the consistency figures of this backbone are not to be trusted (retrain the judge's view head)"
    )
    return (
        f"- Reference: the world's objects read view accuracy {_num(acc)}, Janus {_janus_pct(rate)} on "
        f"{len(row.front_prompts)} prompt(s) with a front: {verdict}."
    )


def confusion_text(confusion: Optional[dict[str, dict[str, int]]]) -> str:
    """Compact confusion: "front: front 7, side 1 · side: side 16 · back: back 6, front 2" (non-zero counts)."""
    if not confusion:
        return "-"
    parts = []
    for expected in dict.fromkeys(EXPECTED_VIEWS):
        row = confusion.get(expected, {})
        counts = ", ".join(f"{read} {n}" for read, n in sorted(row.items(), key=lambda kv: (kv[0] != expected, -kv[1])) if n)
        parts.append(f"{expected}: {counts or '-'}")
    return " · ".join(parts)


def _pct_pm(mean: Optional[float], std: Optional[float]) -> str:
    """A share as "12.5% ± 3.1%" (or "-")."""
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}%" + ("" if std is None else f" ± {100 * std:.1f}%")


def _janus_pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


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


def _intro(results: Sequence[SetResult], settings: dict[str, Any]) -> list[str]:
    """The title and one paragraph on the cameras and what each figure means."""
    return [
        "# Evaluation",
        "",
        f"{len({r.prompt for r in results})} prompt(s); every asset rendered from the same {settings['views']} cameras "
        f"(orbit at elevation {settings['elevation']:g} deg, distance {settings['distance']:g}, fovy {settings['fovy']:g} deg). "
        "Mean ± std over prompts (std with ddof 0). Quality: judge agreement (share of views whose judged kind, and colour when "
        "the prompt names one, match the prompt) for the shapes prior, CLIP score (100 x cosine) otherwise. IS over all views "
        "of a prompt. CROSS-FID: FID between the views of the first and the second half of the seeds (higher = more diverse).",
        "",
    ]


def _table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _summary_table(rows: Sequence[SummaryRow], has_shapes: bool) -> list[str]:
    """The paper's table: one line per backbone x method (the shapes extras only when a shapes backbone is there)."""
    header = "| backbone | method | CFG | prompts x seeds | quality | IS | CROSS-FID | view accuracy | Janus |"
    sep = "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    if has_shapes:
        header += " colour entropy | pairwise feature distance |"
        sep += " --- | --- |"
    lines = [header, sep]
    for row in rows:
        f = row.figures
        cells = [
            backbone_label(row.model),
            method_label(row.method),
            _cfg(row.guidance_scales),
            f"{row.prompts} x {row.seeds}",
            _pm(*f["quality"][:2]),
            _pm(*f["inception_score"][:2]),
            _pm(*f["cross_fid"][:2], digits=1),
            _pm(*f["view_accuracy"][:2]),
            _pct_pm(*f["janus_rate"][:2]),
        ]
        if has_shapes:
            cells += [_pm(*f["colour_entropy"][:2]), _pm(*f["pairwise_distance"][:2])]
        lines.append(_table_row(cells))
    return lines


def _per_prompt_cells(r: SetResult) -> list[str]:
    """One prompt x backbone x method's cells of the per-prompt table."""
    cf = r.cross_fid
    cf_text = "-" if cf is None else f"{cf.value:.1f} ({cf.n_a}/{cf.n_b}, {cf.feature_dim})"
    colours = "-" if r.seed_colours is None else " ".join(r.seed_colours[s] for s in r.seeds)
    return [
        r.prompt,
        backbone_label(r.model),
        method_label(r.method),
        _cfg([r.guidance_scale]),
        str(len(r.seeds)),
        f"{r.quality:.2f}",
        _num(r.inception_score),
        cf_text,
        colours,
        _num(r.colour_entropy),
        _num(r.pairwise_distance),
        _num(r.view_accuracy),
        "-" if r.janus_rate is None else f"{_janus_pct(r.janus_rate)} ({' '.join(map(str, r.janus_seeds)) or 'none'})",
    ]


def _per_prompt_table(results: Sequence[SetResult]) -> list[str]:
    """The section with one line per prompt x backbone x method, by prompt, backbone and row order."""
    lines = [
        "",
        "## Per prompt",
        "",
        "| prompt | backbone | method | CFG | seeds | quality | IS | CROSS-FID (samples a/b, dim) | colours per seed | "
        "colour entropy | pairwise distance | view accuracy | Janus (seeds) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(results, key=lambda r: (r.prompt, r.model, row_order(r.method))):
        lines.append(_table_row(_per_prompt_cells(r)))
    return lines


def _confusion_section(rows: Sequence[SummaryRow]) -> list[str]:
    """The view-confusion table of the rows with prompts that have a front (nothing when none has)."""
    rows_with_fronts = [row for row in rows if row.confusion is not None]
    if not rows_with_fronts:
        return []
    return [
        "",
        "## View confusion (clear cameras: expected view: read view counts)",
        "",
        "| backbone | method | prompts with a front | confusion |",
        "| --- | --- | --- | --- |",
    ] + [
        f"| {backbone_label(row.model)} | {method_label(row.method)} | {', '.join(row.front_prompts)} | "
        f"{confusion_text(row.confusion)} |"
        for row in rows_with_fronts
    ]


def _scorer_lines(scorer_notes: dict[str, dict[str, Any]]) -> list[str]:
    """Per backbone: what quality, IS, features and view reads were measured with; then what consistency means."""
    lines = []
    for model, note in scorer_notes.items():
        classifier = note["classifier"] or "none (IS not computed)"
        lines.append(
            f"- {backbone_label(model)}: quality = {note['quality']}; IS classifier = {classifier}; "
            f"features = {note['features']}; view reads = {note.get('views', '-')}."
        )
    lines.append(
        "- 3D consistency (docs/evaluation.md): view accuracy = share of the clear cameras (azimuth 0/90/180/270, "
        "the nearest camera to each when the views miss one) read as front/side/back/side; Janus = share of seeds "
        'whose back camera (180) reads "front". Only prompts whose object has a front count (shapes: FRONT_KINDS; '
        "other priors: a front-bearing noun); the confusion table lists them per row. Not measured for DDIM samples."
    )
    return lines


def _cross_fid_line(results: Sequence[SetResult]) -> list[str]:
    """How many feature vectors the CROSS-FID estimates had, and how many are rank-deficient (nothing without any)."""
    cfs = [r.cross_fid for r in results if r.cross_fid is not None]
    if not cfs:
        return []
    deficient = sum(cf.rank_deficient for cf in cfs)
    dims = "/".join(sorted({str(c.feature_dim) for c in cfs}))
    return [
        f"- CROSS-FID from {min(c.n_a for c in cfs)}-{max(c.n_b for c in cfs)} feature vectors per half, "
        f"feature size {dims}; {deficient} of {len(cfs)} estimates have fewer samples than dimensions "
        "(rank-deficient covariances: compare them only with each other, same views and seeds)."
    ]


def _reference_lines(results: Sequence[SetResult], rows: Sequence[SummaryRow], settings: dict[str, Any]) -> list[str]:
    """What the DDIM and truth rows are, when they are there, and the truth rows' calibration check."""
    lines = []
    if any(r.method == "ddim" for r in results):
        lines.append(
            f"- DDIM images: {settings['ddim_samples']} samples per prompt, {settings['ddim_steps']} DDIM steps, "
            "at the FSD runs' CFG (what FSD distils towards; else the first method's, or --ddim-guidance), "
            "view-dependent prompts; "
            "no CROSS-FID (independent samples)."
        )
    if any(r.method == "truth" for r in results):
        lines.append(
            "- World objects (truth): the shapes world's own objects of the prompt's kind "
            "(random colour when the prompt names none), rendered from the same cameras."
        )
        lines += [reference_check(row) for row in rows if row.method == "truth" and row.front_prompts]
    return lines


def _missing_section(missing: Sequence[dict[str, str]]) -> list[str]:
    if not missing:
        return []
    return ["", f"## Missing ({len(missing)})", ""] + [f"- {m['id']}: {m['reason']}" for m in missing]


def markdown(
    results: Sequence[SetResult],
    missing: Sequence[dict[str, str]],
    settings: dict[str, Any],
    scorer_notes: dict[str, dict[str, Any]],
) -> str:
    """The evaluation as markdown: the paper's table, the per-prompt table, how it was measured, what is missing."""
    from fsd_gs.prior.detectors import is_shapes_world

    has_shapes = any(is_shapes_world(r.model) for r in results)
    rows = summarise(results)
    lines = [
        *_intro(results, settings),
        *_summary_table(rows, has_shapes),
        *_per_prompt_table(results),
        *_confusion_section(rows),
        "",
        "## How it was measured",
        "",
        *_scorer_lines(scorer_notes),
        *_cross_fid_line(results),
        *_reference_lines(results, rows, settings),
        *_missing_section(missing),
    ]
    return "\n".join(lines) + "\n"


def to_json(
    results: Sequence[SetResult],
    missing: Sequence[dict[str, str]],
    settings: dict[str, Any],
    scorer_notes: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    summary = [
        {
            "model": r.model,
            "method": r.method,
            "prompts": r.prompts,
            "seeds": r.seeds,
            "guidance_scales": r.guidance_scales,
            "front_prompts": r.front_prompts,
            "confusion": r.confusion,
            **{name: {"mean": m, "std": s, "count": n} for name, (m, s, n) in r.figures.items()},
        }
        for r in summarise(results)
    ]
    return {
        "format": FORMAT,
        "settings": settings,
        "scorers": scorer_notes,
        "summary": summary,
        "results": [r.to_json() for r in results],
        "missing": list(missing),
    }
