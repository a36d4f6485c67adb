"""Which family of pipeline a model is, from its model_index.json: what picks the Stable Diffusion 3 prior and its presets.

    pipeline_class("/models/sd35")                            # "StableDiffusion3Pipeline"
    model_family("stabilityai/stable-diffusion-3.5-medium")   # "sd35"

Only files already on disk are read (a local folder, or the hub id's model_index.json in the Hugging Face cache); the
network is never contacted here, so the preset can be chosen before the prior loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

SD3_PIPELINES: tuple[str, ...] = ("StableDiffusion3Pipeline",)
"""``_class_name`` values of model_index.json that mean a Stable Diffusion 3 / 3.5 pipeline."""

SD3_HUB_MARKERS: tuple[str, ...] = ("stable-diffusion-3",)
"""Parts of a hub id that mean Stable Diffusion 3 when its model_index.json is not in the cache yet."""

Family = Literal["sd21", "sd35"]
"""A preset family: presets are named ``<method>-<family>.yaml`` (fsd-sd21, sds-sd35, ...)."""


def pipeline_class(folder: str | Path) -> Optional[str]:
    """``_class_name`` of ``folder``/model_index.json, or None when the file is missing or unreadable."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = index.get("_class_name") if isinstance(index, dict) else None
    return name if isinstance(name, str) else None


def is_sd3_folder(folder: str | Path) -> bool:
    """True when ``folder``'s model_index.json names a Stable Diffusion 3 pipeline."""
    return pipeline_class(folder) in SD3_PIPELINES


def _cached_index_folder(model: str) -> Optional[Path]:
    """The folder of the hub id ``model``'s cached model_index.json (no network), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "model_index.json")
    except (ImportError, ValueError, OSError):
        return None
    return Path(found).parent if isinstance(found, str) else None


def model_family(model: Optional[str]) -> Family:
    """The preset family of ``--model``: "sd35" for a Stable Diffusion 3 pipeline (folder, cached hub id, or a hub id
    naming it), else "sd21"."""
    if not model:
        return "sd21"
    folder = Path(model).expanduser()
    if folder.is_dir():
        return "sd35" if is_sd3_folder(folder) else "sd21"
    cached = _cached_index_folder(model) if model.count("/") == 1 else None
    if cached is not None:
        return "sd35" if is_sd3_folder(cached) else "sd21"
    return "sd35" if any(marker in model.lower() for marker in SD3_HUB_MARKERS) else "sd21"
