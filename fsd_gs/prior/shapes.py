"""The built-in "shapes" prior: a small pixel-space diffusion model of our own procedural world, shipped in the package.

``--model shapes`` loads ``fsd_gs/assets/shapes_prior`` (written by scripts/train_shapes_prior.py) through
the same diffusers ``from_pretrained`` path as any pixel-space pipeline (:class:`PixelDiffusionPrior`),
and adds one thing: prompts must use the world's vocabulary (fsd_gs/shapes/captions.py), otherwise a
one-sentence :class:`UserError` lists the known words and points to Stable Diffusion for open prompts.

``--model shapes-mv`` loads ``fsd_gs/assets/shapes_mv`` (written by scripts/train_shapes_mv.py: the shapes UNet
fine-tuned MVDream-style, fsd_gs/prior/mvdream_shapes.py) as a :class:`ShapesMVPrior`: MVDream's multi-view
part (fsd_gs/prior/mvdream.py) over :class:`ShapesPrior`, so the vocabulary check and the rest apply too.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.base import VIEW_SUFFIXES, PromptEmbeddings
from fsd_gs.prior.diffusers_prior import PixelDiffusionPrior
from fsd_gs.prior.loading import DEFAULT_MODEL
from fsd_gs.prior.mvdream import MultiViewPriorMixin


def shapes_prior_folder() -> Path:
    """The folder of the shipped weights, ``fsd_gs/assets/shapes_prior``."""
    return Path(__file__).resolve().parent.parent / "assets" / "shapes_prior"


def shapes_mv_folder() -> Path:
    """The folder of the shipped multi-view weights, ``fsd_gs/assets/shapes_mv``."""
    return Path(__file__).resolve().parent.parent / "assets" / "shapes_mv"


@functools.lru_cache(maxsize=1)
def vocabulary() -> dict[str, list[str]]:
    """The shipped prior's words (``shapes.json``: vocabulary, kinds, colours), read once."""
    return json.loads((shapes_prior_folder() / "shapes.json").read_text())


def unknown_words(text: str) -> list[str]:
    """Words of ``text`` the shipped tokenizer does not know, in order, without repeats."""
    known = set(vocabulary()["vocabulary"])
    return list(dict.fromkeys(w for w in re.findall(r"\w+|[^\w\s]+", text.lower()) if w not in known))


def vocabulary_error(text: str) -> UserError | None:
    """The one-sentence error for a prompt with words outside the world's vocabulary, or None if it has none."""
    unknown = unknown_words(text)
    if not unknown:
        return None
    vocab = vocabulary()
    others = [w for w in vocab["vocabulary"] if w not in vocab["kinds"] and w not in vocab["colours"]]
    return UserError(
        f"the built-in shapes prior does not know {', '.join(repr(w) for w in unknown)}: its prompts are "
        f'"a {{colour}} {{object}}" with colours {", ".join(vocab["colours"])} and objects {", ".join(vocab["kinds"])} '
        f'(plus {", ".join(others)}), such as "a red mushroom"; '
        f"for open prompts use Stable Diffusion (--model {DEFAULT_MODEL})"
    )


def check_prompt(text: str) -> None:
    """Raise :func:`vocabulary_error` for ``text`` if it has unknown words."""
    error = vocabulary_error(text)
    if error is not None:
        raise error


class ShapesPrior(PixelDiffusionPrior):
    """:class:`PixelDiffusionPrior` on the shipped folder, with the vocabulary check on every text it embeds.

    Attributes beyond the base class: ``judge_folder`` (the classifier shipped beside the model).
    """

    default_negative_prompt = ""
    """NFSD's negative prompt: none (the world's vocabulary has no words like "blurry")."""
    preset_family = "shapes"
    view_suffixes: Mapping[str, str] = VIEW_SUFFIXES
    """The wording its training captions used (fsd_gs/shapes/captions.py: "a red car, front view"); other wording,
    given through --guidance.view-prompts.*-suffix, must stay within the world's vocabulary."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype, **kwargs: Any) -> None:
        super().__init__(folder, device, dtype, **kwargs)
        self.judge_folder = Path(folder) / "judge"

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        for text in texts:
            check_prompt(text)
        return super().embed_texts(texts)

    def encode_prompts(
        self, prompt: str, negative_prompt: str = "", view_dependent: bool = True, suffixes: Optional[Mapping[str, str]] = None
    ) -> PromptEmbeddings:
        check_prompt(prompt)
        check_prompt(negative_prompt)
        return super().encode_prompts(prompt, negative_prompt, view_dependent, suffixes)


class ShapesMVPrior(MultiViewPriorMixin, ShapesPrior):
    """The multi-view shapes prior (shapes-mv): MVDream's multi-view part (camera embedding, cross-view attention,
    grouped prediction; :class:`~fsd_gs.prior.mvdream.MultiViewPriorMixin`, as in
    :class:`~fsd_gs.prior.mvdream.PixelMVDreamPrior`) over :class:`ShapesPrior` (vocabulary check, judge folder)."""

    preset_family = "shapes-mv"


def load_shapes_prior(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, folder: Path | str | None = None, **kwargs: Any
) -> ShapesPrior:
    """The built-in prior on ``device``.

    Args:
        device, dtype: where and in which precision the networks run.
        folder: another folder of the same layout (default: the shipped one).
        kwargs: :class:`PixelDiffusionPrior` options (offload_text_encoder, channels_last).
    """
    device = torch.device(device)
    folder = Path(folder) if folder is not None else shapes_prior_folder()
    if not (folder / "unet" / "config.json").is_file():
        raise UserError(
            f"the built-in shapes prior is missing from {folder}: reinstall fsd_gs, or train it with "
            "python scripts/train_shapes_prior.py"
        )
    return ShapesPrior(folder, device, dtype, **kwargs)


def load_shapes_mv_prior(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, folder: Path | str | None = None, **kwargs: Any
) -> ShapesMVPrior:
    """The built-in multi-view prior (shapes-mv) on ``device``.

    Args:
        device, dtype: where and in which precision the networks run.
        folder: another folder of the same layout (default: the shipped one, fsd_gs/assets/shapes_mv).
        kwargs: :class:`~fsd_gs.prior.mvdream.MultiViewPriorMixin` options (views_per_group, offload_text_encoder, ...).
    """
    from fsd_gs.prior.mvdream import is_mvdream_folder

    folder = Path(folder) if folder is not None else shapes_mv_folder()
    if not is_mvdream_folder(folder) or not (folder / "unet" / "config.json").is_file():
        raise UserError(
            f"the built-in multi-view shapes prior is missing from {folder}: train it with "
            "python scripts/train_shapes_mv.py --export fsd_gs/assets/shapes_mv, or use --model shapes"
        )
    return ShapesMVPrior(folder, torch.device(device), dtype, **kwargs)
