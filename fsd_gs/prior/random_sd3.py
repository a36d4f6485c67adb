"""Random-weight Stable Diffusion 3 pipelines, built offline, in diffusers' StableDiffusion3Pipeline folder layout.

* :func:`save_tiny_sd3_pipeline`: every SD3 component at toy size (64 px images, 16 x 8 x 8 latents), for CPU tests.
* :func:`save_sd35_medium_random_pipeline`: Stable Diffusion 3.5-medium's published architecture (MMDiT-X transformer,
  2.5B parameters; 16-channel VAE; CLIP-L, CLIP-G and optionally T5-XXL) with random weights: its FLOPs and memory.

Both write model_index.json naming StableDiffusion3Pipeline, the CLIP tokenizers of fsd_gs/prior/random_pipeline.py and
a small T5 unigram tokenizer (tokenizer.json, built here with transformers' T5Tokenizer), so nothing is downloaded and
``StableDiffusion3Pipeline.from_pretrained(folder)`` loads them too. Same seed, same weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.loading import quiet_hf
from fsd_gs.prior.random_pipeline import (
    MAX_TOKENS,
    SD21_VAE_CONFIG,
    TOKENIZER_WORDS,
    _save_text_encoder,
    _write_model_index,
    save_offline_tokenizer,
)

SD3_SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}
"""FlowMatchEulerDiscreteScheduler of Stable Diffusion 3 / 3.5 (T = 1000, timestep shift 3)."""

SD35_MEDIUM_TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
"""SD3Transformer2DModel of stabilityai/stable-diffusion-3.5-medium (MMDiT-X: the first 13 blocks attend twice)."""

SD3_VAE_CONFIG: dict[str, Any] = {
    **SD21_VAE_CONFIG,
    "latent_channels": 16,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
"""AutoencoderKL of Stable Diffusion 3 / 3.5: Stable Diffusion 2's encoder and decoder with 16 latent channels, no quant
convs, latents (mean - shift) * scale."""

CLIP_L_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "max_position_embeddings": MAX_TOKENS,
    "vocab_size": 49408,
}
"""text_encoder: OpenAI CLIP ViT-L/14's text tower with its projection."""

CLIP_G_CONFIG: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "hidden_act": "gelu",
    "max_position_embeddings": MAX_TOKENS,
    "vocab_size": 49408,
}
"""text_encoder_2: OpenCLIP ViT-bigG/14's text tower with its projection."""

T5_XXL_CONFIG: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "tie_word_embeddings": False,
}
"""text_encoder_3: T5 v1.1 XXL's encoder (4.7B parameters)."""

TINY_SD3_TRANSFORMER_CONFIG: dict[str, Any] = {
    **SD35_MEDIUM_TRANSFORMER_CONFIG,
    "sample_size": 8,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 32,
    "pos_embed_max_size": 16,
    "dual_attention_layers": (0,),
}
TINY_SD3_VAE_CONFIG: dict[str, Any] = {
    **SD3_VAE_CONFIG,
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
TINY_CLIP_CONFIG: dict[str, Any] = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "projection_dim": 16,
    "hidden_act": "gelu",
    "max_position_embeddings": MAX_TOKENS,
}
TINY_T5_CONFIG: dict[str, Any] = {
    **T5_XXL_CONFIG,
    "vocab_size": 0,  # the tokenizer's size
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16,
}
"""The tiny pipeline: two 16-wide CLIPs (concatenated 32 = the joint width), a 32-wide T5, a 2-block MMDiT-X."""

SD3_COMPONENTS: dict[str, tuple[str, str]] = {
    "transformer": ("diffusers", "SD3Transformer2DModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
    "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
    "text_encoder_3": ("transformers", "T5EncoderModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "tokenizer_2": ("transformers", "CLIPTokenizer"),
    "tokenizer_3": ("transformers", "T5TokenizerFast"),
}


def save_t5_tokenizer(folder: Path, words: tuple[str, ...] = TOKENIZER_WORDS) -> int:
    """Write a small T5 unigram tokenizer (tokenizer.json) into ``folder``: ``words`` whole, other text letter by letter.

    Ids 0, 1, 2 are <pad>, </s>, <unk> as in T5. Returns its vocabulary size.
    """
    from transformers import T5Tokenizer

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [("\u2581", -2.0)] + [("\u2581" + w, -1.0) for w in words]
    letters = [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.-'"]
    tokenizer = T5Tokenizer(vocab=specials + pieces + letters, extra_ids=0)
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def _save_t5(path: Path, config: dict[str, Any], dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
    """tokenizer_3/ and a random T5EncoderModel text_encoder_3/ of ``config`` (vocab at least the tokenizer's), its
    weights drawn on ``device`` (for T5-XXL's 4.7B parameters a GPU; a CPU build of the whole pipeline with T5 took
    more than 140 s on the GPU machine and did not finish)."""
    from transformers import T5Config, T5EncoderModel

    size = save_t5_tokenizer(path / "tokenizer_3")
    full = {**config, "vocab_size": max(int(config["vocab_size"]), size), "pad_token_id": 0, "eos_token_id": 1}
    full["decoder_start_token_id"] = 0
    with torch.device(device):
        # .to is functools.wraps(nn.Module.to) there: the stubs take the dtype for self
        model = T5EncoderModel(T5Config(**full)).to(dtype)  # pyright: ignore[reportArgumentType]
    model.save_pretrained(path / "text_encoder_3", safe_serialization=True)
    del model


def save_sd3_pipeline(
    path: Path | str, configs: dict[str, dict[str, Any]], with_t5: bool, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Build a random Stable Diffusion 3 pipeline from ``configs`` (keys transformer, vae, clip_l, clip_g, t5) under
    ``path``, one component at a time (peak memory: the largest one). Without T5, model_index.json says so (null)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]), quiet_hf():  # seeded, without touching the caller's global RNG
        torch.manual_seed(seed)
        for index, key in (("", "clip_l"), ("_2", "clip_g")):
            token_ids = save_offline_tokenizer(path / f"tokenizer{index}")
            _save_text_encoder(path / f"text_encoder{index}", configs[key], token_ids, dtype, with_projection=True)
        if with_t5:
            _save_t5(path, configs["t5"], dtype)
        # .to is functools.wraps(nn.Module.to) there: the stubs take the dtype for self
        transformer = SD3Transformer2DModel(**configs["transformer"]).to(dtype)  # pyright: ignore[reportArgumentType]
        transformer.save_pretrained(path / "transformer", safe_serialization=True)
        del transformer
        AutoencoderKL(**configs["vae"]).to(dtype).save_pretrained(path / "vae", safe_serialization=True)  # pyright: ignore[reportArgumentType]
        FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG).save_pretrained(path / "scheduler")
    components = dict(SD3_COMPONENTS)
    extra: dict[str, Any] = {}
    if not with_t5:
        components = {k: v for k, v in components.items() if not k.endswith("_3")}
        extra = {"text_encoder_3": [None, None], "tokenizer_3": [None, None]}
    _write_model_index(path, "StableDiffusion3Pipeline", components, extra)
    return path


def add_t5(
    source: Path | str,
    path: Path | str,
    config: dict[str, Any],
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str = "cpu",
) -> Path:
    """A pipeline folder ``path`` = the T5-less pipeline ``source`` plus a random T5 of ``config``: the source's
    components are linked (symlinks, no copies), only tokenizer_3/ and text_encoder_3/ are built, and model_index.json
    (the source's) names them. Same seed, same T5 weights on one device type (CPU and CUDA draw different numbers).
    The T5's width must be the transformer's joint attention width (a one-sentence error otherwise)."""
    source, path = Path(source).resolve(), Path(path)
    try:
        index = json.loads((source / "model_index.json").read_text())
        joint = int(json.loads((source / "transformer" / "config.json").read_text())["joint_attention_dim"])
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{source} is not a diffusers Stable Diffusion 3 folder ({exc.__class__.__name__}): pass one to --t5-from"
        ) from exc
    if index.get("_class_name") != "StableDiffusion3Pipeline" or (index.get("text_encoder_3") or [None])[0] is not None:
        raise UserError(f"{source} is not a Stable Diffusion 3 pipeline without T5: pass one built without it to --t5-from")
    if int(config["d_model"]) != joint:
        raise UserError(
            f"{source}'s transformer takes {joint}-wide text states, not this kind's T5 ({config['d_model']}): match --kind"
        )
    components = {name: tuple(value) for name, value in index.items() if not name.startswith("_") and isinstance(value, list)}
    path.mkdir(parents=True, exist_ok=True)
    for name, (library, _) in components.items():
        if library is not None:
            (path / name).symlink_to(source / name, target_is_directory=True)
    where = torch.device(device)
    with torch.random.fork_rng(devices=[where.index or 0] if where.type == "cuda" else []), quiet_hf():
        torch.manual_seed(seed)
        _save_t5(path, config, dtype, device)
    components.update({name: SD3_COMPONENTS[name] for name in ("text_encoder_3", "tokenizer_3")})
    _write_model_index(path, "StableDiffusion3Pipeline", components)
    return path


TINY_SD3_CONFIGS = {
    "transformer": TINY_SD3_TRANSFORMER_CONFIG,
    "vae": TINY_SD3_VAE_CONFIG,
    "clip_l": TINY_CLIP_CONFIG,
    "clip_g": TINY_CLIP_CONFIG,
    "t5": TINY_T5_CONFIG,
}
SD35_MEDIUM_CONFIGS = {
    "transformer": SD35_MEDIUM_TRANSFORMER_CONFIG,
    "vae": SD3_VAE_CONFIG,
    "clip_l": CLIP_L_CONFIG,
    "clip_g": CLIP_G_CONFIG,
    "t5": T5_XXL_CONFIG,
}


def save_tiny_sd3_pipeline(path: Path | str, seed: int = 0, with_t5: bool = True) -> Path:
    """A tiny random Stable Diffusion 3 pipeline: 64 px images, 16 x 8 x 8 latents, ~0.2M parameters, T5 optional."""
    return save_sd3_pipeline(path, TINY_SD3_CONFIGS, with_t5, seed=seed)


def save_sd35_medium_random_pipeline(
    path: Path | str, seed: int = 0, with_t5: bool = False, dtype: torch.dtype = torch.float16
) -> Path:
    """Stable Diffusion 3.5-medium's full architecture with random weights, stored in ``dtype`` (fp16: ~5.5 GB without
    T5, ~15 GB with it). Building takes tens of GB of RAM with T5 (its 4.7B parameters are made in fp32 first)."""
    return save_sd3_pipeline(path, SD35_MEDIUM_CONFIGS, with_t5, seed=seed, dtype=dtype)


KINDS = {"sd3-tiny": save_tiny_sd3_pipeline, "sd35m": save_sd35_medium_random_pipeline}
"""``--kind`` of scripts/make_random_pipeline.py -> builder (both take ``with_t5``)."""

T5_OF_KIND: dict[str, tuple[dict[str, Any], torch.dtype]] = {
    "sd3-tiny": (TINY_T5_CONFIG, torch.float32),
    "sd35m": (T5_XXL_CONFIG, torch.float16),
}
"""``--kind`` -> (T5 config, dtype on disk) for ``--t5-from`` (:func:`add_t5`), as the kind's own builder stores it."""
