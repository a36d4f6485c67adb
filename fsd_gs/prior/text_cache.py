"""What the priors' text sides share below the prompt level: each text encoded once, encoders visiting the GPU.

    rows = cached_rows(cache, texts, encode)            # encode(missing texts) -> one value per text, in order
    with visiting(encoder, device, home, offload) as where:
        out = encoder(ids.to(where))

Used by the UNet priors' CLIP text encoder (fsd_gs/prior/diffusers_prior.py) and Stable Diffusion 3's three encoders
(fsd_gs/prior/sd3_text.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

import torch

Value = TypeVar("Value")


def cached_rows(cache: dict[str, Value], texts: list[str], encode: Callable[[list[str]], Iterable[Value]]) -> list[Value]:
    """The cached value of each of ``texts`` (in order), encoding the ones not yet in ``cache`` in one call of ``encode``
    (each distinct text once; ``encode`` returns one value per text it is given, in order)."""
    missing = list(dict.fromkeys(t for t in texts if t not in cache))
    if missing:
        for text, value in zip(missing, encode(missing)):
            cache[text] = value
    return [cache[t] for t in texts]


@contextmanager
def visiting(module: torch.nn.Module, device: torch.device, home: torch.device, offload: bool) -> Iterator[torch.device]:
    """The device ``module``'s inputs go to inside the block: with ``offload`` the module (kept at ``home``, the CPU)
    moves to ``device`` for the block only, then back, and the CUDA cache is emptied; without it, ``home`` (where the
    module lives) and nothing moves."""
    if not offload:
        yield home
        return
    module.to(device)
    try:
        yield device
    finally:
        module.to(home)
        if device.type == "cuda":
            torch.cuda.empty_cache()
