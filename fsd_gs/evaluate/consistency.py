"""3D consistency from per-view reads: does each camera of a turntable see the side of the object it should?

A "view read" names what a view shows -- "front", "side", "back" or "overhead" (:data:`fsd_gs.camera.VIEW_NAMES`):
the shapes judge's view head for the built-in prior, a CLIP view probe otherwise (:mod:`fsd_gs.evaluate.scorers`).
Every object faces azimuth 0, so four "clear" cameras have a known answer:

    azimuth    0      90     180    270
    expected   front  side   back   side

For V turntable views whose azimuths miss one of those angles (V not a multiple of 4), the camera nearest to each
clear azimuth stands in for it (:func:`clear_cameras`; the chosen azimuths are kept in the results).

* view accuracy: the share of the clear cameras whose read is the expected view;
* Janus: the back camera (180) reads "front" -- a front seen from behind, the multi-face failure of text-to-3D;
* confusion: counts of (expected view, read view) over the clear cameras.

Only prompts whose object has a front count (:func:`has_front`): for shapes, the kinds in
:data:`fsd_gs.shapes.world.FRONT_KINDS`; for other priors, prompts naming a noun of :data:`FRONT_NOUNS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from fsd_gs.camera import VIEW_NAMES

CLEAR_AZIMUTHS: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
"""Azimuths (degrees) whose view is known for every object facing +x."""
EXPECTED_VIEWS: tuple[str, ...] = ("front", "side", "back", "side")
"""The view each of :data:`CLEAR_AZIMUTHS` should read."""
BACK = CLEAR_AZIMUTHS.index(180.0)

FRONT_NOUNS: frozenset[str] = frozenset(
    {
        # people and animals (a face)
        "person",
        "man",
        "woman",
        "boy",
        "girl",
        "child",
        "baby",
        "astronaut",
        "knight",
        "wizard",
        "soldier",
        "king",
        "queen",
        "princess",
        "chef",
        "doctor",
        "statue",
        "bust",
        "robot",
        "android",
        "cyborg",
        "doll",
        "teddy",
        "bear",
        "dog",
        "puppy",
        "cat",
        "kitten",
        "lion",
        "tiger",
        "fox",
        "wolf",
        "horse",
        "pony",
        "cow",
        "pig",
        "sheep",
        "goat",
        "deer",
        "rabbit",
        "bunny",
        "mouse",
        "rat",
        "squirrel",
        "raccoon",
        "monkey",
        "gorilla",
        "ape",
        "panda",
        "koala",
        "elephant",
        "giraffe",
        "zebra",
        "camel",
        "bird",
        "owl",
        "parrot",
        "eagle",
        "penguin",
        "duck",
        "chicken",
        "goose",
        "swan",
        "flamingo",
        "fish",
        "shark",
        "dolphin",
        "whale",
        "frog",
        "toad",
        "turtle",
        "tortoise",
        "lizard",
        "snake",
        "crocodile",
        "alligator",
        "dinosaur",
        "dragon",
        "unicorn",
        "corgi",
        "hamster",
        "otter",
        "beaver",
        "hedgehog",
        "bee",
        "butterfly",
        "head",
        "face",
        "skull",
        "mask",
        "character",
        "creature",
        "monster",
        "figurine",
        "animal",
        # vehicles
        "car",
        "truck",
        "bus",
        "van",
        "jeep",
        "tractor",
        "tank",
        "train",
        "locomotive",
        "motorcycle",
        "bicycle",
        "scooter",
        "airplane",
        "aeroplane",
        "plane",
        "jet",
        "helicopter",
        "rocket",
        "spaceship",
        "boat",
        "ship",
        "submarine",
        # buildings and furniture
        "house",
        "cottage",
        "cabin",
        "castle",
        "church",
        "temple",
        "barn",
        "tower",
        "building",
        "shop",
        "hut",
        "chair",
        "armchair",
        "sofa",
        "couch",
        "throne",
        "bench",
        "piano",
        "television",
        "tv",
        "fireplace",
        "snowman",
    }
)
"""Nouns that name things with a front (a face, a windscreen, a door, a seat's opening) that differs from their back.

A prompt of another prior "has a front" when one of its words (lower case, letters only, a trailing plural "s"
dropped) is in this set. Objects with no front (a vase, a tree, a ball, a mushroom) are left out of the Janus rate
and view accuracy: every side of them is a correct answer."""


@dataclass
class Consistency:
    """The 3D consistency of one asset from its V view reads.

    Attributes:
        reads: V view names, one per camera (its read view).
        clear: the camera index standing in for each of :data:`CLEAR_AZIMUTHS` (nearest azimuth).
        clear_azimuths: those cameras' azimuths (degrees, in [0, 360)).
        view_accuracy: share of the clear cameras whose read matches :data:`EXPECTED_VIEWS`.
        janus: the back camera (180 deg) reads "front".
        confusion: expected view -> read view -> count, over the clear cameras (counts sum to len(clear)).
    """

    reads: list[str]
    clear: list[int]
    clear_azimuths: list[float]
    view_accuracy: float
    janus: bool
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)


def _circular_gap(a: float, b: float) -> float:
    d = (a - b) % 360.0
    return min(d, 360.0 - d)


def clear_cameras(azimuths: Sequence[float]) -> list[int]:
    """For each of :data:`CLEAR_AZIMUTHS`, the index of the camera nearest to it in azimuth (the first on ties).

    With V a multiple of 4 on a turntable starting at 0 these are exactly 0, V/4, V/2 and 3V/4."""
    if not azimuths:
        raise ValueError("no cameras")
    return [min(range(len(azimuths)), key=lambda i: (_circular_gap(azimuths[i], target), i)) for target in CLEAR_AZIMUTHS]


def empty_confusion() -> dict[str, dict[str, int]]:
    """Zero counts for every (expected view, read view) pair."""
    return {e: {r: 0 for r in VIEW_NAMES} for e in dict.fromkeys(EXPECTED_VIEWS)}


def add_confusion(total: dict[str, dict[str, int]], part: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """``total`` += ``part`` (in place; returned)."""
    for expected, row in part.items():
        for read, n in row.items():
            total.setdefault(expected, {}).setdefault(read, 0)
            total[expected][read] += n
    return total


def consistency(reads: Sequence[str], azimuths: Sequence[float]) -> Consistency:
    """The consistency of one asset from its per-camera ``reads`` (view names) at ``azimuths`` (degrees)."""
    if len(reads) != len(azimuths):
        raise ValueError(f"{len(reads)} reads for {len(azimuths)} cameras")
    unknown = set(reads) - set(VIEW_NAMES)
    if unknown:
        raise ValueError(f"unknown view names {sorted(unknown)}: reads must be among {VIEW_NAMES}")
    clear = clear_cameras(azimuths)
    confusion = empty_confusion()
    right = 0
    for cam, expected in zip(clear, EXPECTED_VIEWS):
        confusion[expected][reads[cam]] += 1
        right += reads[cam] == expected
    return Consistency(
        list(reads),
        clear,
        [float(azimuths[c]) % 360.0 for c in clear],
        right / len(clear),
        reads[clear[BACK]] == "front",
        confusion,
    )


def _words(prompt: str) -> Iterable[str]:
    for word in re.findall(r"[a-z]+", prompt.lower()):
        yield word
        if word.endswith("s") and len(word) > 3:
            yield word[:-1]


def has_front(prompt: str, model: str) -> bool:
    """Whether the prompt's object has a front, so that its Janus flag and view accuracy mean something.

    The shapes prior: its kind is in :data:`fsd_gs.shapes.world.FRONT_KINDS`. Other priors: a word of the prompt
    is in :data:`FRONT_NOUNS`."""
    from fsd_gs.prior.detectors import is_shapes_world

    if is_shapes_world(model):
        from fsd_gs.shapes.captions import parse
        from fsd_gs.shapes.world import FRONT_KINDS

        return parse(prompt)[0] in FRONT_KINDS
    return any(w in FRONT_NOUNS for w in _words(prompt))


def probe_phrases(prompt: str) -> dict[str, str]:
    """The CLIP view probe's texts, view name -> phrase: "the front of <prompt>", ... ("the top of" for overhead)."""
    words = {"front": "front", "side": "side", "back": "back", "overhead": "top"}
    return {view: f"the {words[view]} of {prompt}" for view in VIEW_NAMES}
