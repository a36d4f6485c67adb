"""Prompt embeddings per view, computed once per prompt: the text side shared by the diffusers priors.

    cache = PromptCache(embed)                      # embed(texts) -> (hidden [N,L,D], pooled [N,P] or None)
    embeddings = cache.get("a red mushroom", "", view_dependent=True, wording=VIEW_SUFFIXES)

One batch of texts per prompt: the prompt with every view's suffix (or alone) and the negative prompt last. Priors with
pooled text embeddings (Stable Diffusion 3) return them from ``embed``; the others return None.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch

from fsd_gs.errors import UserError
from fsd_gs.prior.base import VIEW_SUFFIXES, PromptEmbeddings, view_prompt

Embed = Callable[[list[str]], tuple[torch.Tensor, Optional[torch.Tensor]]]
"""texts (N) -> (hidden states [N,L,D], pooled embeddings [N,P] or None)."""


class PromptCache:
    """:class:`PromptEmbeddings` per (prompt, negative prompt, view_dependent, wording), each computed once.

    Args:
        embed: the prior's text encoder call (:data:`Embed`).
    """

    def __init__(self, embed: Embed) -> None:
        self.embed = embed
        self._cache: dict[tuple[str, str, bool, tuple[tuple[str, str], ...]], PromptEmbeddings] = {}

    def get(self, prompt: str, negative_prompt: str, view_dependent: bool, wording: Mapping[str, str]) -> PromptEmbeddings:
        """Embeddings of ``prompt`` per view ("none", "front", "side", "back", "overhead"; "none" alone unless
        ``view_dependent``) in ``wording`` (the suffix of each view), and of the negative prompt; UserError when the
        prompt is empty."""
        if not prompt or not prompt.strip():
            raise UserError('the prompt is empty: pass a text prompt such as --prompt "a red mushroom"')
        key = (prompt, negative_prompt, bool(view_dependent), tuple(sorted(wording.items())))
        if key not in self._cache:
            views = tuple(VIEW_SUFFIXES) if view_dependent else ("none",)
            hidden, pooled = self.embed([view_prompt(prompt, v, wording) for v in views] + [negative_prompt])  # one batch
            self._cache[key] = PromptEmbeddings(
                cond=hidden[:-1],
                uncond=hidden[-1:],
                views=views,
                pooled_cond=None if pooled is None else pooled[:-1],
                pooled_uncond=None if pooled is None else pooled[-1:],
            )
        return self._cache[key]
