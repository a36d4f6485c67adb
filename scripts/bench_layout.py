"""The Stable Diffusion floor under other memory layouts and cuDNN's autotuner (issue 27: is there speed at the
unchanged preset that our defaults leave behind?).

The floor of an SD step at V views: the guided UNet forward (V x ROWS rows of 4 x 64 x 64 latents, no grad; ROWS = 2
for CFG, 4 with Perp-Neg's two negatives) and the VAE encoder's forward and backward of V renders of 512 x 512 (fp16,
frozen weights, the gradient to the images only). Timed eager and with the UNet call replayed from a CUDA graph, under
channels_last off/on (UNet and VAE) x torch.backends.cudnn.benchmark off/on, in one process, one JSON line per setting
and a last line with all of them.

On a CUDA GPU, with a random-weight SD-2.1-base from scripts/make_random_pipeline.py:
    python scripts/bench_layout.py --model /tmp/sd21-random --views 8 --rows-per-view 2 > layout.jsonl
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass
class Args:
    """The SD floor under channels_last and cudnn.benchmark."""

    model: Path
    """A diffusers Stable Diffusion 1/2 folder (unet/ and vae/)."""
    views: int = 8
    """Renders per step (V)."""
    rows_per_view: int = 2
    """UNet rows per view: 2 (CFG), 4 (CFG + Perp-Neg's two negatives)."""
    warmup: int = 5
    iters: int = 20


def timed_ms(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Mean milliseconds of ``fn`` over ``iters`` calls after ``warmup``, synchronised at both ends."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / iters


def graphed(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    """``fn`` recorded as one CUDA graph (warmed up on a side stream first)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def main() -> None:
    import tyro
    from diffusers import AutoencoderKL, UNet2DConditionModel

    args = tyro.cli(Args)
    dev, half = torch.device("cuda"), torch.float16
    unet = UNet2DConditionModel.from_pretrained(args.model / "unet", torch_dtype=half).to(dev).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(args.model / "vae", torch_dtype=half).to(dev).eval().requires_grad_(False)
    gen = torch.Generator(dev).manual_seed(0)
    rows = args.views * args.rows_per_view
    z = torch.randn(rows, 4, 64, 64, device=dev, dtype=half, generator=gen)
    t = torch.randint(20, 980, (rows,), device=dev, generator=gen)
    emb = torch.randn(rows, 77, unet.config.cross_attention_dim, device=dev, dtype=half, generator=gen)
    images = torch.rand(args.views, 3, 512, 512, device=dev, generator=gen)
    results = []
    for channels_last in (False, True):
        layout = torch.channels_last if channels_last else torch.contiguous_format
        unet.to(memory_format=layout)
        vae.to(memory_format=layout)
        latents = z.contiguous(memory_format=layout)

        def unet_forward(latents: torch.Tensor = latents) -> torch.Tensor:
            with torch.no_grad():
                return unet(latents, t, encoder_hidden_states=emb).sample

        def vae_forward_backward(layout: torch.memory_format = layout) -> None:
            x = images.clone().requires_grad_(True)
            y = (x * 2 - 1).to(half).contiguous(memory_format=layout)
            vae.encode(y).latent_dist.mean.float().square().sum().backward()

        for autotune in (False, True):
            torch.backends.cudnn.benchmark = autotune
            unet_ms = timed_ms(unet_forward, args.warmup, args.iters)
            vae_ms = timed_ms(vae_forward_backward, args.warmup, args.iters)
            graph = graphed(unet_forward)
            graph_ms = timed_ms(graph.replay, args.warmup, args.iters)
            row = {
                "channels_last": channels_last,
                "cudnn_benchmark": autotune,
                "unet_ms": round(unet_ms, 2),
                "unet_graph_ms": round(graph_ms, 2),
                "vae_fb_ms": round(vae_ms, 2),
                "floor_ms": round(unet_ms + vae_ms, 2),
                "floor_graph_ms": round(graph_ms + vae_ms, 2),
            }
            print(json.dumps(row), flush=True)
            results.append(row)
            del graph
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "views": args.views}
    print(json.dumps({**info, "rows_per_view": args.rows_per_view, "rows": results}))


if __name__ == "__main__":
    main()
