"""Which prompt each training view gets: DreamFusion-style view names from a camera and the suffix of each name.

    names = ViewPromptConfig().view_names(cameras)                 # ["front", "side", ...], one per camera
    suffixes = ViewPromptConfig().suffixes(prior.view_suffixes)    # {"none": "", "front": ", front view", ...}

The spans decide the name (:func:`fsd_gs.camera.view_direction`); the suffix wording is the prior's own
unless the config overrides a view's wording (the built-in shapes prior was trained with ", front view" etc.).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from fsd_gs.camera import Cameras, ViewName, view_directions
from fsd_gs.errors import require


@dataclass
class ViewPromptConfig:
    """View-dependent prompting: which views are "front", "back" or "overhead", and the words each view adds."""

    front_span: float = 45.0
    """A view within this many degrees of azimuth 0 (the object's front) is "front"."""
    back_span: float = 45.0
    """A view within this many degrees of azimuth 180 is "back"; views between front and back are "side"."""
    overhead_above: float = 60.0
    """A view above this elevation (degrees) is "overhead", whatever its azimuth."""
    front_suffix: Optional[str] = None
    """Words appended to the prompt for front views. None: the prior's own wording (", front view"; for --model shapes
    the wording its captions were trained with, which it only understands in that form)."""
    side_suffix: Optional[str] = None
    """Words appended for side views. None: the prior's own wording (", side view"; shapes: as trained)."""
    back_suffix: Optional[str] = None
    """Words appended for back views. None: the prior's own wording (", back view"; shapes: as trained)."""
    overhead_suffix: Optional[str] = None
    """Words appended for overhead views. None: the prior's own wording (", overhead view"; shapes: as trained)."""

    def validate(self) -> None:
        """Raise :class:`~fsd_gs.errors.UserError` on the first bad option."""
        require(
            0.0 <= self.front_span <= 180.0,
            f"--guidance.view-prompts.front-span must lie in [0, 180] degrees, got {self.front_span}",
        )
        require(
            0.0 <= self.back_span <= 180.0,
            f"--guidance.view-prompts.back-span must lie in [0, 180] degrees, got {self.back_span}",
        )
        require(
            self.front_span + self.back_span <= 180.0,
            "--guidance.view-prompts.front-span plus back-span must be at "
            f"most 180 degrees (front and back would overlap), got {self.front_span} + {self.back_span}",
        )
        require(
            -90.0 <= self.overhead_above <= 90.0,
            f"--guidance.view-prompts.overhead-above must lie in [-90, 90] degrees, got {self.overhead_above}",
        )

    def overrides(self) -> dict[str, str]:
        """The suffixes this config sets, by view name (views left at None are absent)."""
        given = {"front": self.front_suffix, "side": self.side_suffix, "back": self.back_suffix, "overhead": self.overhead_suffix}
        return {view: text for view, text in given.items() if text is not None}

    def suffixes(self, defaults: Mapping[str, str]) -> dict[str, str]:
        """Every view's suffix: ``defaults`` (the prior's ``view_suffixes``) with this config's overrides applied."""
        return {**dict(defaults), **self.overrides()}

    def view_names(self, cameras: Cameras) -> list[ViewName]:
        """The view name of every camera of a batch (B names) under these spans."""
        return view_directions(cameras, self.front_span, self.back_span, self.overhead_above)
