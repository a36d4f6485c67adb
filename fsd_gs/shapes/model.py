"""The built-in prior's networks and its folder: a pixel-space diffusers pipeline small enough for a 2-core CPU.

Layout of the folder (``fsd_gs/assets/shapes_prior``), the diffusers pipeline layout that
:class:`fsd_gs.prior.diffusers_prior.PixelDiffusionPrior` loads with ``from_pretrained``:

    model_index.json          components (no vae/: a pixel-space pipeline)
    unet/                     UNet2DConditionModel, 3 x 64 x 64, config.json + diffusion_pytorch_model.safetensors
    text_encoder/             CLIPTextModel (3 layers, width 128), config.json + model.safetensors
    tokenizer/                a CLIP BPE tokenizer in which every word of the world's vocabulary is one token
    scheduler/                DDIMScheduler config (linear betas 1e-4..0.02, T = 1000, epsilon prediction), or for the
                              rectified-flow prior (shapes-flow) a FlowMatchEulerDiscreteScheduler config (T = 1000, shift)
    vp_flow.json              shapes-flow only: the UNet is the epsilon VP network above, read as a flow velocity
                              through fsd_gs/prior/vp_flow.py (the file holds its VP scheduler config)
    judge/                    the classifier of :mod:`fsd_gs.shapes.judge`
    shapes.json               the world's vocabulary, kinds, colours and the training summary

Weights are stored in fp16 (half the bytes) and loaded in whatever precision the prior runs in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from fsd_gs.io.clip_tokenizer import BOS_TOKEN, EOS_TOKEN, write_clip_tokenizer
from fsd_gs.shapes.captions import VOCABULARY
from fsd_gs.shapes.world import COLOUR_NAMES, KINDS

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from fsd_gs.prior.vp_flow import VPAsFlow
    from fsd_gs.shapes.judge import Judge

RESOLUTION = 64
MAX_TOKENS = 12
"""Token sequence length: BOS + the longest caption ("the orange mushroom , overhead view" = 6) + EOS, padded."""

UNET_CONFIG: dict[str, Any] = {
    "sample_size": RESOLUTION,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (32, 64, 96, 128),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "attention_head_dim": (4, 8, 8, 8),
    "cross_attention_dim": 128,
    "norm_num_groups": 16,
}
"""5.5M parameters; cross-attention at 16x16 and 8x8 (and the 8x8 mid block). ~50 ms per guided batch of 2 on 2 CPU cores."""

TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "hidden_act": "gelu",
    "max_position_embeddings": MAX_TOKENS,
    "projection_dim": 128,
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
}
"""DDPM's pixel-space noise schedule; DDIM sampling clips x0 to [-1, 1]."""

FLOW_CLIP_X0 = float(SCHEDULER_CONFIG["clip_sample_range"])
"""shapes-flow's clamp of the high-noise x0 estimate (fsd_gs/prior/vp_flow.py), the epsilon prior's DDIM clip: without
it 50-step Euler samples match their colour-free prompt's kind 0.80 of the time, with it 1.00 (docs/shapes-flow.md)."""

COMPONENTS = {
    "unet": ["diffusers", "UNet2DConditionModel"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "DDIMScheduler"],
}


# -- tokenizer ------------------------------------------------------------------------------------
def tokenizer_files(words: tuple[str, ...] = VOCABULARY) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) of a CLIP BPE tokenizer that spells every word of ``words`` as ONE token.

    The merges are learned by BPE training on the word list itself and applied in that order, so every
    training word comes out whole (BPE replays its training merges). Other words fall apart into
    characters; the prior rejects them before tokenizing.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=4096, min_frequency=1, end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator([" ".join(words)], trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return vocab, merges


def save_tokenizer(folder: Path | str) -> dict[str, int]:
    """Write the CLIP tokenizer files into ``folder``; returns the ids the text encoder config needs."""
    vocab, merges = tokenizer_files()
    write_clip_tokenizer(folder, vocab, merges, MAX_TOKENS)
    return token_ids(vocab)


def token_ids(vocab: dict[str, int]) -> dict[str, int]:
    """The ids the text encoder config needs, from a tokenizer's ``vocab``."""
    return {
        "vocab_size": len(vocab),
        "bos_token_id": vocab[BOS_TOKEN],
        "eos_token_id": vocab[EOS_TOKEN],
        "pad_token_id": vocab[EOS_TOKEN],
    }


def copy_tokenizer(src: Path | str, folder: Path | str) -> dict[str, int]:
    """Copy the tokenizer files of ``src`` into ``folder`` (a resumed run keeps the ids its text encoder learned:
    BPE training breaks frequency ties differently from build to build, even within a process, so a rebuilt
    tokenizer can renumber single-character tokens); returns the ids the text encoder config needs."""
    import shutil

    src, folder = Path(src), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, folder / f.name)
    return token_ids(json.loads((folder / "vocab.json").read_text()))


def load_tokenizer(folder: Path | str) -> Any:
    """The CLIPTokenizer of ``folder`` (the class the diffusers priors use)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


# -- networks -------------------------------------------------------------------------------------
def build_networks(token_ids: dict[str, int]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Fresh (unet, text_encoder) in fp32 with the architectures above (torch's global RNG initialises them)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**{**TEXT_CONFIG, **token_ids}))
    return unet, text_encoder


def tokenize(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Token ids [N, MAX_TOKENS] (padded with EOS, as the prior does)."""
    return tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids


def save_pipeline(
    folder: Path | str,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    judge: Judge | None = None,
    summary: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
    tokenizer: Path | None = None,
    flow_shift: float | None = None,
) -> Path:
    """Write the whole prior folder (weights in ``dtype``); returns it. ``tokenizer``: the tokenizer folder the
    text encoder was trained with (copied; a new one is built when None, whose single-character ids can differ).
    ``flow_shift``: write a rectified-flow prior (shapes-flow: :func:`save_flow_scheduler` with this shift) instead
    of the DDIM one."""
    import diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        copy_tokenizer(tokenizer, folder / "tokenizer")
    else:
        save_tokenizer(folder / "tokenizer")
    # save_pretrained of a converted copy: the training modules stay in their own precision.
    # from_config's stubs return (model, unused kwargs) too, which it does only with return_unused_kwargs=True
    unet_copy = cast("UNet2DConditionModel", type(unet).from_config(unet.config))
    unet_copy.load_state_dict(unet.state_dict())
    # .to is functools.wraps(nn.Module.to) in diffusers and transformers: the stubs take the dtype for self
    unet_copy.to(dtype).save_pretrained(folder / "unet", safe_serialization=True)  # pyright: ignore[reportArgumentType]
    te_copy = type(text_encoder)(text_encoder.config)
    te_copy.load_state_dict(text_encoder.state_dict())
    te_copy.to(dtype).save_pretrained(folder / "text_encoder", safe_serialization=True)  # pyright: ignore[reportArgumentType]
    components = save_flow_scheduler(folder, flow_shift) if flow_shift is not None else save_ddim_scheduler(folder)
    index = {"_class_name": "PixelDiffusionPipeline", "_diffusers_version": diffusers.__version__, **components}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    if judge is not None:
        judge.save(folder / "judge", dtype=dtype)
    meta = {
        "vocabulary": list(VOCABULARY),
        "kinds": list(KINDS),
        "colours": list(COLOUR_NAMES),
        "resolution": RESOLUTION,
        "training": summary or {},
    }
    (folder / "shapes.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def save_ddim_scheduler(folder: Path) -> dict[str, list[str]]:
    """Write the DDIM scheduler of the epsilon prior into ``folder``/scheduler; returns model_index's components."""
    from diffusers import DDIMScheduler

    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
    return COMPONENTS


def save_flow_scheduler(folder: Path, shift: float) -> dict[str, list[str]]:
    """Make ``folder`` a rectified-flow prior: a FlowMatchEulerDiscreteScheduler (T = 1000, ``shift``) in scheduler/
    and vp_flow.json (its UNet is the epsilon network of :data:`SCHEDULER_CONFIG`, read as a velocity); returns
    model_index's components."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fsd_gs.prior.vp_flow import write_conversion

    FlowMatchEulerDiscreteScheduler(num_train_timesteps=SCHEDULER_CONFIG["num_train_timesteps"], shift=shift).save_pretrained(
        folder / "scheduler"
    )
    write_conversion(folder, SCHEDULER_CONFIG, FLOW_CLIP_X0)
    return {**COMPONENTS, "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}


def flow_network(unet: torch.nn.Module) -> VPAsFlow:
    """shapes-flow's velocity network over the epsilon ``unet`` (what a flow folder of :func:`save_flow_scheduler` loads
    as): :class:`~fsd_gs.prior.vp_flow.VPAsFlow` for :data:`SCHEDULER_CONFIG`, x0 clamped to :data:`FLOW_CLIP_X0`."""
    from fsd_gs.prior.vp_flow import wrap_vp_unet

    return wrap_vp_unet(unet, SCHEDULER_CONFIG, int(SCHEDULER_CONFIG["num_train_timesteps"]), FLOW_CLIP_X0)


def folder_size(folder: Path | str) -> int:
    """Total bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
