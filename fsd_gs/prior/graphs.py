"""CUDA graphs without torch.compile (``--prior.compile graphs``): a no-grad network call replayed from a recording.

    call = unet_call(prior.unet, "graphs")     # (z [N,C,h,w], t [N], emb [N,L,D], labels [N,K] | None) -> out [N,C',h,w]
    out = call(z, t, emb, None)                 # first use of these shapes: warm-up + capture; then replays

Why: the guided UNet call launches hundreds of small kernels, and on a fast GPU their launch cost rivals their work.
Replaying them from one CUDA graph removes that cost, as torch.compile's ``mode="reduce-overhead"`` (``cudagraphs``)
does, but its first step takes 1.2-1.8 s where a cold compile takes 73 s; the kernels stay eager PyTorch's (no
Triton fusion), so a step is slower than ``cudagraphs``: 43 ms against 30 (eager 56-63; one H100, SD-2.1-base fp16,
512 px, BENCHMARKS.md round 3, third session). Only the UNet is recorded: its output is never
differentiated (the prior predicts under ``torch.no_grad``; gradients flow through the VAE encoder and the renderer,
which run eagerly).

How (PyTorch's CUDA-graph notes, "whole-network capture"), in :class:`GraphedCall`:

* One graph per *signature*, the (shape, dtype, device) of every argument (None stays None): a batch of another
  size (grouped seeds, Perp-Neg's negatives, sampling) records its own graph on first use.
* Recording: the arguments are copied into static buffers (allocated outside the graph pool), the call runs
  :data:`WARMUP_CALLS` times on a side stream (cuBLAS/cuDNN set-up and autotuning happen outside the capture), then
  once more under ``torch.cuda.graph``.
* A replay copies the arguments into the static buffers, replays, and returns a *clone* of the static output.
  Every graph allocates from one shared memory pool. That is safe because replays never overlap (one stream,
  one call at a time) and each output is cloned before any other replay can overwrite it.
* With autograd on (grad mode, or an argument that requires grad) the call runs eagerly: a replay records no
  backward. After :data:`MAX_GRAPHS` signatures, new ones run eagerly too (bounded memory).
* The network's weights must stay where they are after recording (a graph reads them by address).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

WARMUP_CALLS = 3
"""Eager calls on a side stream before a capture (PyTorch's docs use 3)."""
MAX_GRAPHS = 8
"""Signatures recorded per :class:`GraphedCall`; calls of further ones run eagerly."""

Arg = Optional[torch.Tensor]
Signature = tuple[Optional[tuple[tuple[int, ...], torch.dtype, torch.device]], ...]
Capture = Callable[[Callable[..., torch.Tensor], tuple[Arg, ...]], tuple[Callable[[], object], torch.Tensor]]
"""(fn, static arguments) -> (replay, static output): records ``fn(*static)`` so that ``replay()`` recomputes the
static output from the static arguments' current values."""
UNetCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
"""(z [N,C,h,w], timesteps [N], text embeddings [N,L,D], class labels [N,K] or None) -> the UNet's output [N,C',h,w]."""


def signature(args: tuple[Arg, ...]) -> Signature:
    """Each argument's (shape, dtype, device), None for None; TypeError for anything else."""
    if any(a is not None and not isinstance(a, torch.Tensor) for a in args):
        raise TypeError("a graphed call takes tensors or None only")
    return tuple(None if a is None else (tuple(a.shape), a.dtype, a.device) for a in args)


class CudaGraphCapture:
    """The :data:`Capture` of CUDA: warm-up on a side stream, then ``torch.cuda.graph``; all graphs share one pool."""

    def __init__(self, warmup: int = WARMUP_CALLS) -> None:
        self.warmup = warmup
        self.pool: Optional[Any] = None
        """torch.cuda.graph_pool_handle() of the first capture, shared by every later one."""

    def __call__(self, fn: Callable[..., torch.Tensor], static: tuple[Arg, ...]) -> tuple[Callable[[], object], torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the live viewer may use CUDA from its own thread while this one records
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            output = fn(*static)
        return graph.replay, output


@dataclass
class _Recording:
    inputs: tuple[Arg, ...]
    """Static argument buffers [same shapes as the call's], read by every replay."""
    output: torch.Tensor
    """Static output, overwritten by every replay (of this graph, and maybe of others sharing the pool)."""
    replay: Callable[[], object]


class GraphedCall:
    """``fn(*args)`` (tensors or None -> one tensor, no grad) replayed from one recorded graph per signature.

    Attributes:
        fn: the eager call; also what runs with autograd on or past ``max_graphs`` signatures.
        recordings: signature -> static buffers, static output and replay.
        capture_s: seconds spent warming up and recording so far (the start-up this mode costs).
        eager_calls: calls that ran eagerly (autograd on, or too many signatures).
    """

    def __init__(self, fn: Callable[..., torch.Tensor], capture: Optional[Capture] = None, max_graphs: int = MAX_GRAPHS) -> None:
        self.fn = fn
        self.capture: Capture = capture if capture is not None else CudaGraphCapture()
        self.max_graphs = max_graphs
        self.recordings: dict[Signature, _Recording] = {}
        self.capture_s = 0.0
        self.eager_calls = 0

    def __call__(self, *args: Arg) -> torch.Tensor:
        """``fn(*args)``: a clone of the replayed graph's output (yours to keep), or ``fn``'s own result when eager."""
        key = signature(args)
        recording = self.recordings.get(key)
        needs_grad = torch.is_grad_enabled() or any(a is not None and a.requires_grad for a in args)
        if needs_grad or (recording is None and len(self.recordings) >= self.max_graphs):
            self.eager_calls += 1
            return self.fn(*args)
        if recording is None:
            recording = self.recordings[key] = self._record(args)
        for static, arg in zip(recording.inputs, args):
            if static is not None and arg is not None:
                static.copy_(arg)
        recording.replay()
        return recording.output.clone()

    def _record(self, args: tuple[Arg, ...]) -> _Recording:
        """Static buffers holding ``args`` (contiguous), and ``fn`` recorded on them."""
        start = time.perf_counter()
        inputs = tuple(None if a is None else torch.empty(a.shape, dtype=a.dtype, device=a.device).copy_(a) for a in args)
        try:
            replay, output = self.capture(self.fn, inputs)
        except RuntimeError as exc:
            shapes = ", ".join("None" if a is None else str(tuple(a.shape)) for a in args)
            raise RuntimeError(
                f"recording the prior's network as a CUDA graph failed for inputs of shapes {shapes} ({exc}); "
                "--prior.compile off or cudagraphs avoid it"
            ) from exc
        self.capture_s += time.perf_counter() - start
        return _Recording(inputs, output, replay)


def unet_call(unet: torch.nn.Module, mode: str, capture: Optional[Capture] = None) -> UNetCall:
    """``unet(z, t, encoder_hidden_states=emb, class_labels=labels).sample`` as a call of four tensors; with mode
    "graphs" a :class:`GraphedCall` of it (``capture``: the recorder, CUDA's by default), else the call itself."""

    def forward(z: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return unet(z, t, encoder_hidden_states=emb, class_labels=labels).sample

    return GraphedCall(forward, capture) if mode == "graphs" else forward
