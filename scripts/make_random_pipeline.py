"""Build a random-weight diffusers pipeline folder, offline (no downloads), for tests and timing.

    python scripts/make_random_pipeline.py --kind tiny  --out /tmp/tiny-sd     # 64 px SD layout, ~1 MB, seconds
    python scripts/make_random_pipeline.py --kind sd21  --out /tmp/sd21-random # SD 2.1-base size, 2.6 GB (fp16)
    python scripts/make_random_pipeline.py --kind pixel --out /tmp/tiny-pixel  # pixel-space UNet, no VAE
    python scripts/make_random_pipeline.py --kind mvdream --out /tmp/mvdream-random  # MVDream SD 2.1 size, 2.6 GB (fp16)
    python scripts/make_random_pipeline.py --kind tiny-mvdream --out /tmp/tiny-mvdream  # MVDream layout at 64 px
    python scripts/make_random_pipeline.py --kind sd3-tiny --out /tmp/tiny-sd3     # SD3 layout at 64 px (T5 included)
    python scripts/make_random_pipeline.py --kind sd35m --out /tmp/sd35m-random    # SD3.5-medium size, ~5.5 GB (fp16)
    python scripts/make_random_pipeline.py --kind sd35m --t5 True --out /tmp/sd35m-t5  # the same with T5-XXL, ~15 GB
    python scripts/make_random_pipeline.py --kind sd35m --t5-from /tmp/sd35m-random --device cuda --out /tmp/sd35m-t5
        # the same, faster: links the T5-less folder's components and draws only T5-XXL's weights (on the GPU)

The folder loads with ``--model <folder>`` (fsd_gs.train, fsd_gs.image2d) and with diffusers'
``from_pretrained(folder)``. The folder must not exist yet (or be empty): nothing is overwritten.
The last line printed is the folder.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

from fsd_gs.errors import UserError


@dataclass
class Args:
    """Build a random-weight diffusers pipeline (tiny SD, SD 2.1-base size, tiny pixel-space, or MVDream) offline."""

    out: Path
    """Folder to create (must not exist, or be empty)."""
    kind: Literal["tiny", "sd21", "pixel", "mvdream", "tiny-mvdream", "sd3-tiny", "sd35m"] = "tiny"
    """tiny: SD layout at 64 px; sd21: the full SD 2.1-base architecture (random weights, fp16 on disk); pixel: no VAE;
    mvdream: MVDream SD 2.1-base's full size in the ashawkey/mvdream-sd2.1-diffusers layout (fp16, 256 px);
    tiny-mvdream: the same layout at 64 px; sd3-tiny: Stable Diffusion 3 layout at 64 px;
    sd35m: Stable Diffusion 3.5-medium's full architecture (random weights, fp16 on disk)."""
    seed: int = 0
    """Seed of the random weights (same seed, same weights)."""
    t5: Optional[bool] = None
    """Stable Diffusion 3 kinds: include the T5 text encoder (default: yes for sd3-tiny, no for sd35m)."""
    t5_from: Optional[Path] = None
    """Stable Diffusion 3 kinds: a pipeline of this kind built without T5; --out links its components and adds only a
    random T5 (the kind's size), so nothing but T5 is built again."""
    device: str = "cpu"
    """Where --t5-from draws T5's random weights (cuda for T5-XXL's 4.7B parameters: on the CPU, the whole pipeline with
    T5 took more than 140 s on the GPU machine and did not finish)."""


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else list(argv), description=__doc__)
    try:
        if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
            raise UserError(f"{args.out} already exists and is not empty: pass a new folder to --out")
        from fsd_gs.prior import mvdream_random, random_pipeline, random_sd3

        builders = {**random_pipeline.KINDS, **mvdream_random.KINDS}
        start = time.perf_counter()
        if args.t5_from is None and args.device != "cpu":
            raise UserError("--device applies to --t5-from only (the other builders draw their weights on the CPU)")
        if args.t5_from is not None:
            if args.kind not in random_sd3.T5_OF_KIND or args.t5 is False:
                raise UserError("--t5-from adds T5 to a Stable Diffusion 3 pipeline: use it with --kind sd3-tiny or sd35m")
            config, dtype = random_sd3.T5_OF_KIND[args.kind]
            path = random_sd3.add_t5(args.t5_from, args.out, config, seed=args.seed, dtype=dtype, device=args.device)
        elif args.kind in random_sd3.KINDS:
            with_t5 = args.t5 if args.t5 is not None else args.kind == "sd3-tiny"
            path = random_sd3.KINDS[args.kind](args.out, seed=args.seed, with_t5=with_t5)
        else:
            if args.t5 is not None:
                raise UserError(f"--t5 applies to the Stable Diffusion 3 kinds only, not --kind {args.kind}")
            path = builders[args.kind](args.out, seed=args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    print(f"built a random {args.kind} pipeline ({size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
