"""Captions of the shapes world and the vocabulary they are written in.

A caption is ``"a {colour} {kind}"`` (``"an"`` before a vowel), with the colour word left out for a share
of samples (so "a mushroom" has many right answers), plus a DreamFusion-style view suffix
(:data:`fsd_gs.prior.base.VIEW_SUFFIXES`) named from the camera's azimuth and elevation relative to the
object's front by :func:`fsd_gs.camera.view_direction` -- the same rule the training loop uses to pick
the prompt of each view, so captions and distillation prompts agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from fsd_gs.camera import VIEW_NAMES, view_direction
from fsd_gs.prior.base import VIEW_SUFFIXES
from fsd_gs.shapes.world import COLOUR_NAMES, KINDS

ARTICLES: tuple[str, ...] = ("a", "an", "the")
VIEW_WORDS: tuple[str, ...] = ("front", "side", "back", "overhead", "view")
PUNCTUATION: tuple[str, ...] = (",",)
VOCABULARY: tuple[str, ...] = (*ARTICLES, *COLOUR_NAMES, *KINDS, *VIEW_WORDS, *PUNCTUATION)
"""Every word (lower case) the built-in prior's tokenizer knows."""

_WORD = re.compile(r"\w+|[^\w\s]+")


@dataclass
class CaptionConfig:
    """How captions are drawn for training."""

    p_no_colour: float = 0.3
    """Share of captions without the colour word ("a mushroom")."""
    p_no_view: float = 0.2
    """Share of captions without a view suffix (the "none" view of view-independent prompting)."""
    p_empty: float = 0.1
    """Share of empty captions (the unconditional model for classifier-free guidance)."""
    p_the: float = 0.05
    """Share of captions starting with "the" instead of "a"/"an"."""


def article(word: str) -> str:
    """ "an" before a vowel, else "a"."""
    return "an" if word[:1] in "aeiou" else "a"


def caption(kind: str, colour: str | None, view: str = "none", the: bool = False) -> str:
    """The caption of an object: ``caption("mushroom", "red", "front") == "a red mushroom, front view"``.

    ``colour`` None leaves the colour out; ``view`` is a key of :data:`VIEW_SUFFIXES`.
    """
    noun = kind if colour is None else f"{colour} {kind}"
    return f"{'the' if the else article(noun)} {noun}{VIEW_SUFFIXES[view]}"


def view_of(azimuth: float, elevation: float) -> str:
    """The view name ("front", "side", "back", "overhead") of a camera, relative to the object's front (+x)."""
    return view_direction(azimuth, elevation)


def sample_captions(
    kinds: list[str],
    colours: list[str],
    azimuths: torch.Tensor,
    elevations: torch.Tensor,
    generator: torch.Generator,
    config: CaptionConfig | None = None,
) -> list[str]:
    """One training caption per view: per-sample random colour / view / empty dropout from ``generator``."""
    config = config or CaptionConfig()
    u = torch.rand(len(kinds), 4, generator=generator, dtype=torch.float64)
    out = []
    for i, (kind, colour) in enumerate(zip(kinds, colours)):
        if u[i, 0] < config.p_empty:
            out.append("")
            continue
        view = "none" if u[i, 1] < config.p_no_view else view_of(float(azimuths[i]), float(elevations[i]))
        out.append(caption(kind, None if u[i, 2] < config.p_no_colour else colour, view, the=bool(u[i, 3] < config.p_the)))
    return out


def words(text: str) -> list[str]:
    """The words of ``text`` as the tokenizer splits them (lower case; punctuation separate)."""
    return _WORD.findall(text.lower())


def unknown_words(text: str) -> list[str]:
    """Words of ``text`` outside :data:`VOCABULARY`, in order, without repeats."""
    known = set(VOCABULARY)
    return list(dict.fromkeys(w for w in words(text) if w not in known))


def parse(text: str) -> tuple[str | None, str | None, str]:
    """(kind or None, colour or None, view) named by a caption (last kind/colour word wins; view "none" if absent)."""
    kind = colour = None
    view = "none"
    for w in words(text):
        if w in KINDS:
            kind = w
        elif w in COLOUR_NAMES:
            colour = w
        elif w in VIEW_NAMES:
            view = w
    return kind, colour, view
