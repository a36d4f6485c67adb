"""2D check of a multi-view prior on the shapes world: do its 4-view samples read front / side / back / side?

    result = four_view_check(prior, judge, groups_per_kind=8)      # prior: shapes-mv (or shapes, as a baseline)
    save_sample_grid(result.images, "docs/images/shapes_mv_samples.png")

For every front kind, ``groups_per_kind`` groups of 4 views (MVDream's reference orbit: azimuths 0, 90, 180, 270 at
one elevation) are sampled with the project's DDIM sampler (fsd_gs/sampling.py) from the prompt "a <kind>"; the
shipped judge reads each view's kind and view. A consistent group reads front, side, back, side (the shapes world's
objects face azimuth 0). Numbers: view accuracy over all views, "Janus" = share of groups whose back view (180)
reads "front", kind accuracy, and the share of groups with all 4 views right. A prior without groups (the plain
shapes prior) samples the 4 views independently: with ``view_prompts`` its only view cue is the prompt's suffix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fsd_gs.camera import VIEW_NAMES, view_direction
from fsd_gs.sampling import sample

CHECK_KINDS = ("chair", "fish", "house", "car", "bird", "robot")
"""The front kinds of issue 30's consistency measurements."""

AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
"""The group's azimuths (MVDream's reference views); the expected views are :func:`view_direction` of them."""


@dataclass
class FourViewCheck:
    """Result of :func:`four_view_check`.

    Attributes:
        images: the samples [K*G*4,3,H,W] in [0,1], kind by kind, group by group, views in :data:`AZIMUTHS` order.
        read_views: the judge's view name per image (same order).
        per_kind: kind -> {"view_accuracy", "janus", "kind_accuracy", "consistent"}.
        view_accuracy, janus, kind_accuracy, consistent: the same over all kinds.
        settings: what was sampled (guidance, steps, elevation, view_prompts, groups_per_kind, seed).
    """

    images: torch.Tensor
    read_views: list[str]
    per_kind: dict[str, dict[str, float]]
    view_accuracy: float
    janus: float
    kind_accuracy: float
    consistent: float
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the images and per-image views (for JSON)."""
        return {
            "view_accuracy": self.view_accuracy,
            "janus": self.janus,
            "kind_accuracy": self.kind_accuracy,
            "consistent": self.consistent,
            "per_kind": self.per_kind,
            "settings": self.settings,
        }


@torch.no_grad()
def sample_groups(
    prior: Any,
    prompt: str,
    groups: int,
    guidance_scale: float,
    steps: int,
    elevation: float,
    view_prompts: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """``groups`` x 4 views of ``prompt`` at :data:`AZIMUTHS` and ``elevation``: images [groups*4,3,H,W] in [0,1].

    A multi-view prior gets the 4 cameras through its reference orbit (``default_elevation`` set to ``elevation``
    for the call); ``view_prompts`` also adds each view's suffix to the prompt ("a chair, back view").
    """
    views = [view_direction(a, elevation) for a in AZIMUTHS] * groups
    emb = prior.encode_prompts(prompt, view_dependent=view_prompts)
    conditioning = emb.select(views if view_prompts else ["none"] * len(views))
    size = prior.resolution // prior.downsample
    noise = torch.randn(len(views), prior.channels, size, size, generator=generator)
    saved = getattr(prior, "default_elevation", None)
    if saved is not None:
        prior.default_elevation = float(elevation)
    try:
        z0 = sample(prior, noise, conditioning, guidance_scale, steps=steps)
    finally:
        if saved is not None:
            prior.default_elevation = saved
    return prior.decode(z0).cpu()


def four_view_check(
    prior: Any,
    judge: Any,
    kinds: tuple[str, ...] = CHECK_KINDS,
    groups_per_kind: int = 8,
    guidance_scale: float = 2.5,
    steps: int = 50,
    elevation: float = 15.0,
    view_prompts: bool = False,
    seed: int = 0,
) -> FourViewCheck:
    """Sample 4-view groups per kind and judge them (see the module docstring).

    Args:
        prior: a shapes-world prior (shapes-mv's :class:`~fsd_gs.prior.shapes.ShapesMVPrior`, or the shapes prior).
        judge: the shapes judge (:func:`fsd_gs.shapes.judge.load_judge`).
        kinds: the prompts' kinds ("a <kind>").
        groups_per_kind: G groups of 4 views per kind.
        guidance_scale, steps: DDIM's CFG and steps (2.5: the shapes presets' CFG).
        elevation: the groups' elevation in degrees.
        view_prompts: add each view's suffix to the prompt too.
        seed: the noise's seed.
    """
    from fsd_gs.shapes.world import KINDS

    if prior.views_per_group not in (1, len(AZIMUTHS)):
        raise ValueError(f"the check samples groups of {len(AZIMUTHS)} views; the prior groups {prior.views_per_group}")
    generator = torch.Generator().manual_seed(seed)
    expected = torch.tensor([VIEW_NAMES.index(view_direction(a, elevation)) for a in AZIMUTHS])
    front, back = VIEW_NAMES.index("front"), AZIMUTHS.index(180.0)
    images, read_views, per_kind = [], [], {}
    for kind in kinds:
        x = sample_groups(prior, f"a {kind}", groups_per_kind, guidance_scale, steps, elevation, view_prompts, generator)
        labels = judge.predict(x)
        view = labels["view"].reshape(groups_per_kind, len(AZIMUTHS))
        right = view == expected
        per_kind[kind] = {
            "view_accuracy": float(right.float().mean()),
            "janus": float((view[:, back] == front).float().mean()),
            "kind_accuracy": float((labels["kind"] == KINDS.index(kind)).float().mean()),
            "consistent": float(right.all(dim=1).float().mean()),
        }
        images.append(x)
        read_views += [VIEW_NAMES[i] for i in labels["view"].tolist()]
    mean = {key: sum(v[key] for v in per_kind.values()) / len(per_kind) for key in next(iter(per_kind.values()))}
    settings = dict(
        guidance_scale=guidance_scale,
        steps=steps,
        elevation=elevation,
        view_prompts=view_prompts,
        groups_per_kind=groups_per_kind,
        seed=seed,
        kinds=list(kinds),
    )
    return FourViewCheck(torch.cat(images), read_views, per_kind, settings=settings, **mean)


def save_sample_grid(images: torch.Tensor, path: Path | str, columns: int = 4) -> Path:
    """Write images [N,3,H,W] in [0,1] as one PNG, ``columns`` per row (a group of 4 views per row); returns the path."""
    from PIL import Image

    from fsd_gs.image2d import to_uint8
    from fsd_gs.turntable import image_grid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(torch.from_numpy(to_uint8(images)), columns=columns)).save(path)
    return path
