"""MVDream's multi-view UNet as a plain diffusers ``UNet2DConditionModel`` (no custom model class, no xformers).

MVDream (Shi et al., arXiv 2308.16512) is Stable Diffusion 2.1-base's UNet with two changes:

* a camera embedding, Linear(16 -> 4C) -> SiLU -> Linear(4C -> 4C) of the flattened 4x4 camera matrix, added
  to the timestep embedding (C = 320 model channels). diffusers' ``class_embed_type="projection"`` with
  ``projection_class_embeddings_input_dim=16`` builds exactly this MLP (``class_embedding.linear_1/2``); the
  camera vectors go in as ``class_labels``.
* self-attention across the views of a group: in every transformer block the self-attention (attn1) sees the
  tokens of all F views of a group at once ([B*F, N, C] -> [B, F*N, C]); cross-attention and the feed-forward
  stay per view. :class:`MultiViewAttnProcessor` does this around diffusers' SDPA processor.

Weights come in the original LDM names (``input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight``,
``camera_embed.0.weight``, ...), both in the single-file checkpoint (prefixed ``model.diffusion_model.``) and
in the public diffusers-format folder (unet/ written by a custom class). :func:`ldm_to_diffusers_names` maps
them with diffusers' own single-file converter plus the camera keys; :func:`load_unet` checks every name and
shape and says in one sentence what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.loading import quiet_hf

CAMERA_DIM = 16
"""Length of MVDream's camera vector (a flattened 4x4 camera-to-world matrix)."""

LDM_PREFIX = "model.diffusion_model."
"""Prefix of the UNet's keys in the original single-file checkpoint."""

UNET_CLASS = "MultiViewUNetModel"
"""The original UNet class name, as in unet/config.json and model_index.json of the public diffusers-format weights."""

MVDREAM_SD21_CONFIG: dict[str, Any] = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64,
    "transformer_depth": 1,
    "context_dim": 1024,
    "camera_dim": CAMERA_DIM,
}
"""The UNet of MVDream sd-v2.1-base-4view in the original (LDM) parameter names, as in the original
sd-v2-base.yaml and the unet/config.json of ashawkey/mvdream-sd2.1-diffusers (32 x 32 latents = 256 px)."""

CAMERA_KEYS: dict[str, str] = {
    "camera_embed.0.weight": "class_embedding.linear_1.weight",
    "camera_embed.0.bias": "class_embedding.linear_1.bias",
    "camera_embed.2.weight": "class_embedding.linear_2.weight",
    "camera_embed.2.bias": "class_embedding.linear_2.bias",
}
"""LDM name -> diffusers name of the camera MLP (diffusers' single-file converter does not know these)."""

_FIXED: dict[str, Any] = {
    "dims": 2,
    "conv_resample": True,
    "num_classes": None,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "n_embed": None,
    "num_attention_blocks": None,
    "adm_in_channels": None,
    "ip_dim": 0,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
}
"""Options of the original model class that MVDream leaves at these values (others are other models)."""

_IGNORED = {
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "use_checkpoint",
    "use_fp16",
    "dropout",
    "legacy",
    "num_heads_upsample",
    "ip_weight",
    "use_new_attention_order",
    "disable_self_attentions",
}
"""Keys that do not change the inference architecture (training switches, bookkeeping)."""

_REQUIRED = (
    "image_size",
    "in_channels",
    "out_channels",
    "model_channels",
    "attention_resolutions",
    "num_res_blocks",
    "channel_mult",
    "context_dim",
)


# -- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MVDreamUNetSpec:
    """The architecture of an MVDream UNet, read (and checked) from an LDM-style config.

    Attributes:
        image_size: latent size h = w (32 for the 256 px model).
        in_channels, out_channels: latent channels (4).
        model_channels: C of the first level (320); the time embedding has 4C.
        channel_mult: per-level channel multipliers.
        num_res_blocks: residual blocks per level.
        attention_resolutions: the downsampling factors (1, 2, 4, ...) whose levels have transformers.
        heads: attention heads per level.
        transformer_depth: transformer blocks per attention layer.
        context_dim: text-feature size of the cross-attention (1024 for OpenCLIP-H).
        camera_dim: camera vector length (16), or None for no camera embedding.
    """

    image_size: int
    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    heads: tuple[int, ...]
    transformer_depth: int
    context_dim: int
    camera_dim: Optional[int]

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels per level."""
        return tuple(self.model_channels * m for m in self.channel_mult)

    def has_attention(self, level: int) -> bool:
        """Whether level ``level`` (downsampling 2**level) has transformer blocks."""
        return 2**level in self.attention_resolutions


def parse_config(config: Mapping[str, Any], source: str = "the MVDream UNet config") -> MVDreamUNetSpec:
    """The :class:`MVDreamUNetSpec` of an LDM-style MVDream UNet config (unet/config.json or the yaml's unet params).

    Raises UserError (one sentence) for a missing key, an unknown key, or an option MVDream does not use
    (e.g. ImageDream's ``ip_dim`` > 0).
    """
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise UserError(
            f"{source} lacks {', '.join(missing)}: pass the unet/config.json of an MVDream pipeline "
            "(e.g. ashawkey/mvdream-sd2.1-diffusers)"
        )
    unknown = sorted(
        k
        for k in config
        if k not in _REQUIRED
        and k not in _FIXED
        and k not in _IGNORED
        and k not in ("num_heads", "num_head_channels", "transformer_depth", "camera_dim")
    )
    if unknown:
        raise UserError(
            f"{source} has keys MVDream's UNet does not have ({', '.join(unknown)}): "
            "only MVDream text-to-multi-view UNets can be loaded"
        )
    for key, value in _FIXED.items():
        if key in config and config[key] != value:
            what = "ImageDream (image-prompted) models are not supported" if key == "ip_dim" else "MVDream does not use it"
            raise UserError(
                f"{source} sets {key}={config[key]!r}, which this loader cannot build ({what}): "
                "use a text-to-multi-view MVDream checkpoint"
            )
    if not isinstance(config["num_res_blocks"], int):
        raise UserError(
            f"{source} has per-level num_res_blocks {config['num_res_blocks']!r}: only one number for all "
            "levels is supported (MVDream uses 2)"
        )
    depth = config.get("transformer_depth", 1)
    if not isinstance(depth, int):
        raise UserError(f"{source} has per-level transformer_depth {depth!r}: only one number is supported (MVDream uses 1)")
    mc = int(config["model_channels"])
    mults = tuple(int(m) for m in config["channel_mult"])
    head_channels = int(config.get("num_head_channels", -1) or -1)
    num_heads = int(config.get("num_heads", -1) or -1)
    if head_channels == -1 and num_heads == -1:
        raise UserError(f"{source} sets neither num_head_channels nor num_heads: set one (MVDream: num_head_channels 64)")
    heads = []
    for m in mults:
        ch = mc * m
        h = ch // head_channels if head_channels != -1 else num_heads
        if h < 1 or ch % h:
            raise UserError(f"{source}: {ch} channels cannot be split into attention heads ({head_channels=}, {num_heads=})")
        heads.append(h)
    camera_dim = config.get("camera_dim")
    return MVDreamUNetSpec(
        image_size=int(config["image_size"]),
        in_channels=int(config["in_channels"]),
        out_channels=int(config["out_channels"]),
        model_channels=mc,
        channel_mult=mults,
        num_res_blocks=int(config["num_res_blocks"]),
        attention_resolutions=tuple(int(r) for r in config["attention_resolutions"]),
        heads=tuple(heads),
        transformer_depth=int(depth),
        context_dim=int(config["context_dim"]),
        camera_dim=None if camera_dim is None else int(camera_dim),
    )


def diffusers_config(spec: MVDreamUNetSpec) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` config of ``spec``: SD 2.x's layout plus the projection class embedding.

    ``attention_head_dim`` holds the number of heads per level (diffusers' historical naming, as in SD 2.1's
    own config); linear projections in the transformers; the camera MLP as ``class_embed_type="projection"``.
    """
    levels = range(len(spec.channel_mult))
    down = tuple("CrossAttnDownBlock2D" if spec.has_attention(i) else "DownBlock2D" for i in levels)
    up = tuple("CrossAttnUpBlock2D" if spec.has_attention(i) else "UpBlock2D" for i in reversed(levels))
    config: dict[str, Any] = {
        "sample_size": spec.image_size,
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "block_out_channels": spec.channels,
        "layers_per_block": spec.num_res_blocks,
        "attention_head_dim": spec.heads,
        "transformer_layers_per_block": spec.transformer_depth,
        "cross_attention_dim": spec.context_dim,
        "use_linear_projection": True,
        "down_block_types": down,
        "up_block_types": up,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
    }
    if spec.camera_dim is not None:
        config.update(class_embed_type="projection", projection_class_embeddings_input_dim=spec.camera_dim)
    return config


# -- the original state dict's names and shapes ----------------------------------------------------
class _LDMShapes:
    """Collects names and shapes of LDM modules' weights, in the order they are added (``table``: name -> shape)."""

    def __init__(self, spec: MVDreamUNetSpec) -> None:
        self.spec = spec
        self.temb = 4 * spec.model_channels
        """Width of the timestep (and camera) embedding."""
        self.table: dict[str, tuple[int, ...]] = {}

    def linear(self, name: str, n_in: int, n_out: int, bias: bool = True) -> None:
        """nn.Linear: weight [out, in], bias [out]."""
        self.table[f"{name}.weight"] = (n_out, n_in)
        if bias:
            self.table[f"{name}.bias"] = (n_out,)

    def conv(self, name: str, n_in: int, n_out: int, k: int) -> None:
        """nn.Conv2d: weight [out, in, k, k], bias [out]."""
        self.table[f"{name}.weight"] = (n_out, n_in, k, k)
        self.table[f"{name}.bias"] = (n_out,)

    def norm(self, name: str, ch: int) -> None:
        """GroupNorm / LayerNorm: weight [ch], bias [ch]."""
        self.table[f"{name}.weight"] = (ch,)
        self.table[f"{name}.bias"] = (ch,)

    def resblock(self, name: str, n_in: int, n_out: int) -> None:
        """ResBlock: norm, conv, the embedding's projection, norm, conv, and a 1x1 skip when the width changes."""
        self.norm(f"{name}.in_layers.0", n_in)
        self.conv(f"{name}.in_layers.2", n_in, n_out, 3)
        self.linear(f"{name}.emb_layers.1", self.temb, n_out)
        self.norm(f"{name}.out_layers.0", n_out)
        self.conv(f"{name}.out_layers.3", n_out, n_out, 3)
        if n_in != n_out:
            self.conv(f"{name}.skip_connection", n_in, n_out, 1)

    def transformer(self, name: str, ch: int) -> None:
        """SpatialTransformer with linear projections: per block self- and cross-attention and a GEGLU feed-forward."""
        self.norm(f"{name}.norm", ch)
        self.linear(f"{name}.proj_in", ch, ch)
        for d in range(self.spec.transformer_depth):
            block = f"{name}.transformer_blocks.{d}"
            for attn, context in (("attn1", ch), ("attn2", self.spec.context_dim)):
                self.linear(f"{block}.{attn}.to_q", ch, ch, bias=False)
                self.linear(f"{block}.{attn}.to_k", context, ch, bias=False)
                self.linear(f"{block}.{attn}.to_v", context, ch, bias=False)
                self.linear(f"{block}.{attn}.to_out.0", ch, ch)
            self.linear(f"{block}.ff.net.0.proj", ch, 8 * ch)  # GEGLU: value and gate of the 4x hidden layer
            self.linear(f"{block}.ff.net.2", 4 * ch, ch)
            for k in (1, 2, 3):
                self.norm(f"{block}.norm{k}", ch)
        self.linear(f"{name}.proj_out", ch, ch)


def _ldm_input_blocks(shapes: _LDMShapes) -> tuple[list[int], int]:
    """``input_blocks``: the input conv, then per level ResBlocks (+ transformers) and a downsampling ``op``.

    Returns the channel count of every skip connection, in order, and the width after the last block.
    """
    spec = shapes.spec
    shapes.conv("input_blocks.0.0", spec.in_channels, spec.model_channels, 3)
    skips, ch, n = [spec.model_channels], spec.model_channels, 1
    last = len(spec.channel_mult) - 1
    for level, out in enumerate(spec.channels):
        for _ in range(spec.num_res_blocks):
            shapes.resblock(f"input_blocks.{n}.0", ch, out)
            ch = out
            if spec.has_attention(level):
                shapes.transformer(f"input_blocks.{n}.1", ch)
            skips.append(ch)
            n += 1
        if level != last:
            shapes.conv(f"input_blocks.{n}.0.op", ch, ch, 3)
            skips.append(ch)
            n += 1
    return skips, ch


def _ldm_output_blocks(shapes: _LDMShapes, skips: list[int], ch: int) -> int:
    """``output_blocks``: per level, deepest first, ResBlocks on the concatenated skips (+ transformers) and an
    upsampling ``conv``; consumes ``skips`` from the end. Returns the width after the last block."""
    spec = shapes.spec
    n = 0
    for level in reversed(range(len(spec.channel_mult))):
        out = spec.channels[level]
        for i in range(spec.num_res_blocks + 1):
            shapes.resblock(f"output_blocks.{n}.0", ch + skips.pop(), out)
            ch = out
            index = 1
            if spec.has_attention(level):
                shapes.transformer(f"output_blocks.{n}.1", ch)
                index = 2
            if level and i == spec.num_res_blocks:
                shapes.conv(f"output_blocks.{n}.{index}.conv", ch, ch, 3)
            n += 1
    return ch


def ldm_unet_shapes(spec: MVDreamUNetSpec) -> dict[str, tuple[int, ...]]:
    """Names (LDM, without the ``model.diffusion_model.`` prefix) and shapes of the original model's weights.

    Follows the original MultiViewUNetModel's module tree: ``input_blocks`` (conv, then per level
    ``num_res_blocks`` x [ResBlock, transformer] and a downsampling conv ``op``), ``middle_block``
    (ResBlock, transformer, ResBlock), ``output_blocks`` (per level ``num_res_blocks + 1`` x [ResBlock,
    transformer] and an upsampling ``conv``), ``out``, ``time_embed`` and ``camera_embed``.
    """
    shapes = _LDMShapes(spec)
    shapes.linear("time_embed.0", spec.model_channels, shapes.temb)
    shapes.linear("time_embed.2", shapes.temb, shapes.temb)
    if spec.camera_dim is not None:
        shapes.linear("camera_embed.0", spec.camera_dim, shapes.temb)
        shapes.linear("camera_embed.2", shapes.temb, shapes.temb)
    skips, ch = _ldm_input_blocks(shapes)
    shapes.resblock("middle_block.0", ch, ch)
    shapes.transformer("middle_block.1", ch)
    shapes.resblock("middle_block.2", ch, ch)
    ch = _ldm_output_blocks(shapes, skips, ch)
    shapes.norm("out.0", ch)
    shapes.conv("out.2", spec.model_channels, spec.out_channels, 3)
    return shapes.table


# -- name mapping ---------------------------------------------------------------------------------
def ldm_to_diffusers_names(ldm_keys: Iterable[str], layers_per_block: int) -> dict[str, str]:
    """diffusers name -> LDM name for the UNet keys among ``ldm_keys`` (given without the LDM prefix).

    The SD part is diffusers' single-file converter (``convert_ldm_unet_checkpoint``, run on a dict whose
    values are the key names themselves, so it returns the renaming table); the camera MLP is
    :data:`CAMERA_KEYS`. Keys neither knows are left out (the caller reports them).
    """
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    keys = list(ldm_keys)
    with quiet_hf():
        table = convert_ldm_unet_checkpoint({LDM_UNET_KEY + k: k for k in keys}, {"layers_per_block": layers_per_block})
    table = {new: old for new, old in table.items() if old is not None}
    table.update({new: old for old, new in CAMERA_KEYS.items() if old in keys})
    return table


def convert_state_dict(
    state: Mapping[str, Any],
    expected: Mapping[str, tuple[int, ...]],
    layers_per_block: int,
    source: str,
) -> dict[str, Any]:
    """LDM-named UNet weights (any objects with ``.shape``) -> diffusers names, checked against ``expected``.

    Args:
        state: LDM name (no prefix) -> tensor.
        expected: diffusers name -> shape of the model to load into.
        layers_per_block: the UNet's residual blocks per level.
        source: where the weights come from, for messages.
    Raises UserError with one sentence when a weight is unknown, missing, or has the wrong shape.
    """
    table = ldm_to_diffusers_names(state.keys(), layers_per_block)
    used = {table[name] for name in expected if name in table}
    unexpected = sorted(k for k in state if k not in used)
    if unexpected:
        raise UserError(
            f"{source} has {len(unexpected)} UNet weights this MVDream architecture does not have "
            f"(e.g. {', '.join(unexpected[:3])}): check that it is an MVDream SD 2.1 checkpoint and that "
            "its unet config matches"
        )
    missing = sorted(n for n in expected if n not in table)
    if missing:
        hint = (
            " (no camera embedding: is it a plain Stable Diffusion checkpoint?)"
            if any(n.startswith("class_embedding.") for n in missing)
            else ""
        )
        raise UserError(
            f"{source} lacks {len(missing)} UNet weights of the MVDream architecture (e.g. "
            f"{', '.join(missing[:3])}){hint}: pass a complete MVDream checkpoint"
        )
    out: dict[str, Any] = {}
    for new, shape in expected.items():
        value = state[table[new]]
        if tuple(value.shape) != tuple(shape):
            raise UserError(
                f"{source}: weight {table[new]} has shape {tuple(value.shape)} but the MVDream UNet needs "
                f"{tuple(shape)}: the checkpoint and the unet config do not match"
            )
        out[new] = value
    return out


# -- cross-view self-attention --------------------------------------------------------------------
class MultiViewAttnProcessor:
    """Self-attention over all views of a group: [B*F, N, C] -> [B, F*N, C] -> SDPA -> [B*F, N, C].

    Wraps diffusers' ``AttnProcessor2_0`` (torch scaled_dot_product_attention); only for self-attention
    (attn1), where keys and values are the queries' own tokens. F = ``num_frames``; with F = 1 it is the
    plain SD self-attention, bit for bit.
    """

    def __init__(self, num_frames: int) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = int(num_frames)
        self.inner = AttnProcessor2_0()

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("MultiViewAttnProcessor is for self-attention only (no encoder states, no mask)")
        frames = self.num_frames
        batch_frames, tokens, channels = hidden_states.shape
        if batch_frames % frames:
            raise UserError(
                f"MVDream attends across groups of {frames} views, but the batch has {batch_frames} "
                f"views: use a batch size that is a multiple of {frames}"
            )
        grouped = hidden_states.reshape(batch_frames // frames, frames * tokens, channels)
        return self.inner(attn, grouped, temb=temb).reshape(batch_frames, tokens, channels)


def set_views_per_group(unet: Any, num_frames: int) -> None:
    """Give every self-attention (attn1) of ``unet`` a :class:`MultiViewAttnProcessor` over ``num_frames`` views;
    cross-attention (attn2) keeps diffusers' per-view SDPA processor."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = {
        name: MultiViewAttnProcessor(num_frames) if name.endswith("attn1.processor") else AttnProcessor2_0()
        for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)


# -- building and loading -------------------------------------------------------------------------
def build_unet(spec: MVDreamUNetSpec, num_frames: int = 4, device: torch.device | str | None = None) -> Any:
    """A random-weight (or, on device "meta", weightless) MVDream ``UNet2DConditionModel`` with cross-view attention."""
    from diffusers import UNet2DConditionModel

    with quiet_hf(), torch.device(device or "cpu"):
        unet = UNet2DConditionModel(**diffusers_config(spec))
    set_views_per_group(unet, num_frames)
    return unet


def load_unet(
    spec: MVDreamUNetSpec, state: Mapping[str, torch.Tensor], dtype: torch.dtype, source: str, num_frames: int = 4
) -> Any:
    """The MVDream UNet of ``spec`` holding the LDM-named weights ``state``, in ``dtype``, eval mode, frozen.

    The model is built without memory (meta device) and takes the loaded tensors directly; every weight
    must be present with the right shape (UserError otherwise).
    """
    unet = build_unet(spec, num_frames, device="meta")
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    converted = convert_state_dict(state, expected, spec.num_res_blocks, source)
    unet.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=True, assign=True)
    return unet.eval().requires_grad_(False)


def to_ldm_state_dict(unet: Any, spec: MVDreamUNetSpec) -> dict[str, torch.Tensor]:
    """``unet``'s weights under the original LDM names (the layout of the public MVDream files)."""
    table = ldm_to_diffusers_names(ldm_unet_shapes(spec), spec.num_res_blocks)
    return {table[name]: tensor for name, tensor in unet.state_dict().items()}
