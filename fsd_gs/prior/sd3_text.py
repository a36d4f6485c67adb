"""Stable Diffusion 3's text side: two CLIP text encoders and an optional T5, one prompt embedding per text.

The embedding is the one diffusers' ``StableDiffusion3Pipeline.encode_prompt`` builds (written here from its
description, at its defaults: no clip skip, 256 T5 tokens):

    clip_l, pooled_l = CLIP-L(text)    penultimate hidden states [77, D_l], projected pooled output [P_l]
    clip_g, pooled_g = CLIP-G(text)    [77, D_g], [P_g]
    clip   = pad(cat([clip_l, clip_g], features), to the joint attention width J)       [77, J]
    t5     = T5(text) [256, J], or zeros [256, J] without T5
    hidden = cat([clip, t5], tokens)   [77 + 256, J]       pooled = cat([pooled_l, pooled_g])   [P_l + P_g]

Texts are embedded once and cached. With ``offload`` the encoders stay on the CPU and visit the GPU one at a time
while encoding (the peak is the largest encoder, T5-XXL's ~9.5 GB in half precision, not all three).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.diffusers_prior import _load, load_frozen
from fsd_gs.prior.text_cache import cached_rows, visiting

T5_TOKENS = 256
"""T5 tokens per prompt (the pipeline's default ``max_sequence_length``)."""


def _load_clip(folder: Path, index: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """(CLIPTokenizer, CLIPTextModelWithProjection frozen in ``dtype``) of tokenizer``index``/ and text_encoder``index``/."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = _load(f"tokenizer{index}", folder, lambda: CLIPTokenizer.from_pretrained(folder / f"tokenizer{index}"))
    return tokenizer, load_frozen(f"text_encoder{index}", folder, CLIPTextModelWithProjection, dtype, library="transformers")


def _load_t5(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """(T5's fast tokenizer, T5EncoderModel frozen in ``dtype``) of tokenizer_3/ and text_encoder_3/."""
    from transformers import AutoTokenizer, T5EncoderModel

    if not (folder / "text_encoder_3" / "config.json").is_file():
        raise UserError(
            f"--prior.t5 on asks for the T5 text encoder but {folder} has no text_encoder_3/: use --prior.t5 off (or "
            "auto), or a pipeline folder that includes T5"
        )
    tokenizer = _load("tokenizer_3", folder, lambda: AutoTokenizer.from_pretrained(folder / "tokenizer_3"))
    return tokenizer, load_frozen("text_encoder_3", folder, T5EncoderModel, dtype, library="transformers")


class SD3TextEncoders:
    """CLIP-L, CLIP-G and (optionally) T5 of a Stable Diffusion 3 folder, frozen; :meth:`embed` gives the joint embedding.

    Attributes:
        clips: [(tokenizer, CLIPTextModelWithProjection)] x 2; t5: (tokenizer, T5EncoderModel) or None.
        joint_dim: J, the transformer's ``joint_attention_dim`` (the width of the token embedding).
        tokens: 77 + :data:`T5_TOKENS`, the embedding's length L.
    """

    def __init__(
        self, folder: Path, dtype: torch.dtype, device: torch.device, joint_dim: int, use_t5: bool, offload: bool
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.joint_dim = joint_dim
        self.clips = [_load_clip(folder, "", dtype), _load_clip(folder, "_2", dtype)]
        self.t5 = _load_t5(folder, dtype) if use_t5 else None
        self.offload = offload and self.device.type != "cpu"
        self.home = torch.device("cpu") if self.offload else self.device
        for module in self.modules():
            module.to(self.home)
        self.clip_tokens = int(self.clips[0][0].model_max_length)
        self.tokens = self.clip_tokens + T5_TOKENS
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def modules(self) -> list[torch.nn.Module]:
        """The loaded encoders (two CLIPs, and T5 when on)."""
        return [model for _, model in self.clips] + ([self.t5[1]] if self.t5 is not None else [])

    def _run(self, model: torch.nn.Module, ids: torch.Tensor, **kwargs: Any) -> Any:
        """``model(ids)`` on the prior's device; an offloaded model visits it for this call only."""
        with visiting(model, self.device, self.home, self.offload) as where:
            return model(ids.to(where), **kwargs)

    def _clip(self, index: int, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate hidden states [N,77,D_i], projected pooled output [N,P_i]) of CLIP ``index``."""
        tokenizer, model = self.clips[index]
        ids = tokenizer(texts, padding="max_length", max_length=self.clip_tokens, truncation=True, return_tensors="pt")
        out = self._run(model, ids.input_ids, output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds

    def _t5(self, texts: list[str]) -> torch.Tensor:
        """T5's last hidden states [N,256,J], or zeros without T5."""
        if self.t5 is None:
            return torch.zeros(len(texts), T5_TOKENS, self.joint_dim, device=self.device, dtype=self.dtype)
        tokenizer, model = self.t5
        ids = tokenizer(
            texts, padding="max_length", max_length=T5_TOKENS, truncation=True, add_special_tokens=True, return_tensors="pt"
        )
        return self._run(model, ids.input_ids)[0]

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [N,L,J], pooled [N,P]) on ``device`` in ``dtype`` for ``texts`` (no cache)."""
        (hidden_l, pooled_l), (hidden_g, pooled_g) = self._clip(0, texts), self._clip(1, texts)
        clip = torch.cat([hidden_l, hidden_g], dim=-1).to(self.device, self.dtype)
        if clip.shape[-1] > self.joint_dim:
            raise UserError(
                f"the CLIP features ({clip.shape[-1]} wide) do not fit the transformer's joint_attention_dim "
                f"({self.joint_dim}): the pipeline's text encoders and transformer do not belong together"
            )
        clip = torch.nn.functional.pad(clip, (0, self.joint_dim - clip.shape[-1]))
        hidden = torch.cat([clip, self._t5(texts).to(self.device, self.dtype)], dim=1)
        pooled = torch.cat([pooled_l, pooled_g], dim=-1).to(self.device, self.dtype)
        return hidden, pooled

    def embed(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [N,L,J], pooled [N,P]) for ``texts`` (on ``device``, in ``dtype``), each text encoded once and cached."""
        rows = cached_rows(self._cache, texts, lambda missing: zip(*self._encode(missing)))
        return torch.stack([hidden for hidden, _ in rows]), torch.stack([pooled for _, pooled in rows])
