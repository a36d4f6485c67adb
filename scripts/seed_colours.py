"""How much a seed's noise decides an asset's colour: per-seed colours across prompts, from evaluation JSONs.

    python scripts/seed_colours.py benchmarks/consistency_shapes-fsd-pn-front-weak_seeds0-7_h100_2026-12-05b.json \
        --method fsd --model shapes
    python scripts/seed_colours.py A.json B.json --method fsd --model shapes --other-model shapes-flow

For one (model, method) of ``python -m fsd_gs.evaluate``'s JSON (its ``results`` rows carry ``seed_colours``, the
judged colour of each seed's asset), it prints each seed's colours over the prompts, and the share of (prompt, seed)
pairs whose colour is that seed's most common one: 1.0 means the seed's noise alone sets the colour. Beside it, the
share expected if seeds said nothing: each prompt's colours shuffled over its seeds (2000 shuffles, seeded). With
``--other-model`` (rows of the same prompts and seeds, from the same or another JSON), it also prints how often the
two priors gave a (prompt, seed) the same colour, against what the two priors' per-prompt colour frequencies would
give by chance.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from tyro.conf import Positional

from fsd_gs.errors import UserError

Colours = dict[str, dict[str, str]]
"""prompt -> seed (as a string, as in the JSON) -> colour name."""


@dataclass
class Args:
    """Per-seed colours across prompts (how much the noise decides the colour), from evaluation JSONs."""

    files: Positional[tuple[Path, ...]]
    """evaluation.json files of `python -m fsd_gs.evaluate` (rows of several files are pooled)."""
    method: str = "fsd"
    """The rows' method; a prefix matches too (fsd matches fsd-perpneg)."""
    model: str = "shapes"
    """The rows' model (prior)."""
    other_model: Optional[str] = None
    """A second model whose rows of the same method, prompts and seeds are compared with the first's."""


def seed_colours(rows: Sequence[dict], model: str, method: str) -> Colours:
    """prompt -> seed -> colour of the rows of ``model`` whose method is ``method`` or starts with ``method-``."""
    found: Colours = {}
    for row in rows:
        if row.get("model") == model and (row.get("method") == method or str(row.get("method")).startswith(method + "-")):
            if row.get("seed_colours"):
                found.setdefault(row["prompt"], {}).update({str(k): v for k, v in row["seed_colours"].items()})
    return found


def common_seeds(colours: Colours) -> list[str]:
    """The seeds present in every prompt, in numeric order."""
    return sorted(set.intersection(*(set(by_seed) for by_seed in colours.values())), key=int)


def modal_share(colours: Colours) -> tuple[int, int]:
    """(pairs whose colour is their seed's most common colour over the prompts, pairs), over seeds in every prompt."""
    seeds = common_seeds(colours)
    hits = sum(Counter(colours[p][s] for p in colours).most_common(1)[0][1] for s in seeds)
    return hits, len(seeds) * len(colours)


def modal_share_by_chance(colours: Colours, rounds: int = 2000, seed: int = 0) -> float:
    """The mean of :func:`modal_share`'s hits when each prompt's colours are shuffled over its seeds (same frequencies)."""
    import random

    rng = random.Random(seed)
    seeds = common_seeds(colours)
    total = 0
    for _ in range(rounds):
        shuffled: Colours = {}
        for prompt, by_seed in colours.items():
            values = [by_seed[s] for s in seeds]
            rng.shuffle(values)
            shuffled[prompt] = dict(zip(seeds, values))
        total += modal_share(shuffled)[0]
    return total / rounds


def agreement(a: Colours, b: Colours) -> tuple[int, int, float]:
    """(pairs given the same colour by a and b, pairs in both, the count expected by chance from each prompt's
    colour frequencies in a and b)."""
    same = total = 0
    chance = 0.0
    for prompt in sorted(set(a) & set(b)):
        seeds = sorted(set(a[prompt]) & set(b[prompt]))
        if not seeds:
            continue
        same += sum(a[prompt][s] == b[prompt][s] for s in seeds)
        total += len(seeds)
        fa, fb = Counter(a[prompt][s] for s in seeds), Counter(b[prompt][s] for s in seeds)
        chance += sum(fa[c] * fb[c] for c in fa) / len(seeds)
    return same, total, chance


def load_rows(files: Sequence[Path]) -> list[dict]:
    rows: list[dict] = []
    for path in files:
        try:
            rows += json.loads(Path(path).read_text())["results"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not an evaluation JSON of python -m fsd_gs.evaluate ({exc.__class__.__name__})") from exc
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    import tyro

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else list(argv), description=__doc__)
    try:
        rows = load_rows(args.files)
        first = seed_colours(rows, args.model, args.method)
        if not first:
            raise UserError(
                f"no rows of model {args.model} and method {args.method} with seed colours in {len(args.files)} file(s)"
            )
        for seed in sorted({s for by_seed in first.values() for s in by_seed}, key=int):
            print(
                f"seed {seed}: " + " ".join(first[p].get(seed, "-") for p in sorted(first)) + f"   ({', '.join(sorted(first))})"
            )
        hits, pairs = modal_share(first)
        print(
            f"{args.model}/{args.method}: {hits}/{pairs} (prompt, seed) pairs take their seed's most common colour "
            f"(seeds that said nothing: {modal_share_by_chance(first):.1f})"
        )
        if args.other_model is not None:
            second = seed_colours(rows, args.other_model, args.method)
            same, total, chance = agreement(first, second)
            if total == 0:
                raise UserError(f"no (prompt, seed) pairs of {args.other_model}/{args.method} match {args.model}'s")
            print(
                f"{args.model} vs {args.other_model}: the same colour for {same}/{total} (prompt, seed) pairs; "
                f"chance {chance:.1f}"
            )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
