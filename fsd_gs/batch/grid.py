"""The grid of a batch: prompts x presets x seeds -> items (one asset each) -> work units -> shards.

Pure functions on plain values: nothing here trains, loads a model or touches Ray, so the grid (its ids,
its order, its shards) is the same on every machine and in every process that builds it.

    items = build_grid(["a red mushroom"], ["shapes-fsd"], [0, 1, 2, 3])
    units = make_units(items, group_seeds=2)         # [(seed0, seed1), (seed2, seed3)]
    mine = shard_units(units, Shard(0, 2))           # every other unit, deterministically
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from fsd_gs.errors import UserError, require
from fsd_gs.run_dir import slugify

_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_SEEDS = 1_000_000


@dataclass(frozen=True)
class Preset:
    """A method preset of the grid: ``arg`` goes to the train parser's --config, ``label`` names its folders."""

    arg: str
    label: str


@dataclass(frozen=True)
class GridItem:
    """One asset of the grid: a (prompt, preset, seed) triple. Its id is also its run folder, relative to the batch folder."""

    prompt: str
    preset: Preset
    seed: int

    @property
    def id(self) -> str:
        """``<prompt-slug>/<preset label>/seed<N>``."""
        return f"{slugify(self.prompt)}/{self.preset.label}/seed{self.seed}"


@dataclass(frozen=True)
class WorkUnit:
    """Items trained together by one call: one item, or K seeds of one (prompt, preset) (``--group-seeds K``)."""

    items: tuple[GridItem, ...]

    @property
    def id(self) -> str:
        return self.items[0].id if len(self.items) == 1 else f"{self.items[0].id}+{len(self.items) - 1}"


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` of ``count`` (0 <= index < count) of the grid's work units."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """ "2/8" -> Shard(2, 8); bad text is a UserError."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if match is None:
            raise UserError(f"--shard must look like i/n (e.g. 0/4, with 0 <= i < n), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        require(count >= 1 and 0 <= index < count, f"--shard {text}: need n >= 1 and 0 <= i < n (i counts from 0)")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# -- parsing the user's lists -----------------------------------------------------------------------
def parse_seeds(tokens: Iterable[str | int]) -> list[int]:
    """Seeds from tokens like "3", "0-7" (inclusive) or "0,1,2"; order kept, repeats dropped."""
    seeds: list[int] = []
    for token in tokens:
        for part in str(token).replace(",", " ").split():
            if part.isdigit():
                values: Iterable[int] = [int(part)]
            else:
                match = _RANGE.match(part)
                if match is None:
                    raise UserError(f"--seeds takes numbers and ranges like 0-7, got {part!r}")
                lo, hi = int(match.group(1)), int(match.group(2))
                require(lo <= hi, f"--seeds range {part!r} runs backwards: write it low-high, e.g. {hi}-{lo}")
                require(hi - lo < MAX_SEEDS, f"--seeds range {part!r} is too long (at most {MAX_SEEDS} seeds)")
                values = range(lo, hi + 1)
            seeds.extend(v for v in values if v not in seeds)
    require(len(seeds) > 0, "no seeds given: pass --seeds 0 1 2 or a range like --seeds 0-7")
    return seeds


def read_prompts_file(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped, text after " #" is a comment."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or exc
        raise UserError(f"cannot read --prompts-file {path} ({reason}): pass a text file, one prompt per line") from exc
    prompts = []
    for line in text.splitlines():
        line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
        if line:
            prompts.append(line)
    return prompts


def collect_prompts(prompts: Sequence[str], prompts_file: Path | None) -> list[str]:
    """The prompts of --prompts then --prompts-file, stripped, repeats dropped; none at all, or two different
    prompts with the same folder name, is a UserError."""
    given = [p.strip() for p in prompts] + (read_prompts_file(prompts_file) if prompts_file is not None else [])
    unique: list[str] = []
    for prompt in given:
        if prompt and prompt not in unique:
            unique.append(prompt)
    require(len(unique) > 0, 'no prompts given: pass --prompts "a red mushroom" "a blue car" or --prompts-file FILE')
    by_slug: dict[str, str] = {}
    for prompt in unique:
        other = by_slug.setdefault(slugify(prompt), prompt)
        require(
            other == prompt,
            f"the prompts {other!r} and {prompt!r} would share the folder {slugify(prompt)!r}: "
            "make them differ in letters or digits",
        )
    return unique


def parse_presets(args: Sequence[str]) -> list[Preset]:
    """Presets from names ("shapes-fsd") or YAML paths ("my/fast.yaml", label "fast"); labels must be unique."""
    presets: list[Preset] = []
    for arg in args:
        arg = arg.strip()
        looks_like_path = arg.endswith((".yaml", ".yml")) or "/" in arg or "\\" in arg
        label = Path(arg).stem if looks_like_path else arg
        require(bool(_LABEL.match(label)), f"preset {arg!r}: its name {label!r} must be letters, digits, '.', '_' or '-'")
        if looks_like_path and not Path(arg).is_file():
            raise UserError(f"preset file {arg} not found: pass a YAML path that exists or a preset name like shapes-fsd")
        if any(p.arg == arg for p in presets):
            continue
        require(all(p.label != label for p in presets), f"two presets are both named {label!r}: rename one of the YAML files")
        presets.append(Preset(arg=arg, label=label))
    require(len(presets) > 0, "no presets given: pass --presets shapes-fsd shapes-sds (names or YAML paths)")
    return presets


# -- the grid -----------------------------------------------------------------------------------------
def build_grid(prompts: Sequence[str], presets: Sequence[Preset | str], seeds: Sequence[int]) -> list[GridItem]:
    """Every (prompt, preset, seed), preset-major (items sharing a prior are adjacent), then prompt, then seed."""
    presets = [p if isinstance(p, Preset) else Preset(p, p) for p in presets]
    return [GridItem(prompt, preset, seed) for preset in presets for prompt in prompts for seed in seeds]


def make_units(items: Sequence[GridItem], group_seeds: int | Mapping[str, int] = 1) -> list[WorkUnit]:
    """Consecutive items of one (prompt, preset) in chunks of at most K seeds, in grid order; ``group_seeds`` is K,
    or K per preset label (a label not in the mapping: 1)."""
    for k in [group_seeds] if isinstance(group_seeds, int) else group_seeds.values():
        require(k >= 1, f"--group-seeds must be >= 1, got {k}")

    def size(item: GridItem) -> int:
        return group_seeds if isinstance(group_seeds, int) else group_seeds.get(item.preset.label, 1)

    units: list[WorkUnit] = []
    chunk: list[GridItem] = []
    for item in items:
        if chunk and (len(chunk) == size(chunk[0]) or (chunk[0].prompt, chunk[0].preset) != (item.prompt, item.preset)):
            units.append(WorkUnit(tuple(chunk)))
            chunk = []
        chunk.append(item)
    if chunk:
        units.append(WorkUnit(tuple(chunk)))
    return units


def shard_units(units: Sequence[WorkUnit], shard: Shard | None) -> list[WorkUnit]:
    """Units ``index, index + count, index + 2 count, ...``: the shards of one grid are disjoint, cover it, and
    differ in size by at most one unit. Depends only on the grid, never on what is already done."""
    if shard is None:
        return list(units)
    return list(units[shard.index :: shard.count])
