"""The shapes world: determinism by seed, framing, fronts, captions and view names, vocabulary."""

from __future__ import annotations

import pytest
import torch

from fsd_gs.camera import orbit_cameras
from fsd_gs.shapes.captions import VOCABULARY, caption, parse, sample_captions, unknown_words, view_of
from fsd_gs.shapes.world import COLOUR_NAMES, FRONT_KINDS, KINDS, make_object, sample_object


def test_world_has_enough_kinds_and_colours():
    assert len(KINDS) >= 12 and len(COLOUR_NAMES) >= 8
    assert len(FRONT_KINDS) >= 3 and set(FRONT_KINDS) <= set(KINDS)
    assert all(" " not in k for k in KINDS)


def test_same_seed_same_object_other_seed_other_object():
    a = sample_object(torch.Generator().manual_seed(5))
    b = sample_object(torch.Generator().manual_seed(5))
    c = sample_object(torch.Generator().manual_seed(6))
    assert (a.kind, a.colour) == (b.kind, b.colour)
    for key in a.gaussians.params:
        assert torch.equal(a.gaussians.params[key], b.gaussians.params[key])
    assert len(a.gaussians) != len(c.gaussians) or not torch.equal(a.gaussians.means, c.gaussians.means)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_fits_the_training_cameras(kind):
    gen = torch.Generator().manual_seed(1)
    for colour in ("red", "blue"):
        obj = make_object(kind, colour, gen)
        g = obj.gaussians
        means = g.means.detach()
        half = (means.max(0).values - means.min(0).values) / 2
        assert 0.45 <= float(half.max()) <= 0.75
        assert means.abs().max() < 0.8  # centred: nothing outside the framing of a 40-deg camera at 2.5
        assert torch.isfinite(g.params["sh0"]).all() and 200 <= len(g) <= 6000
        # Every mean projects inside a 64 px image from a fovy-40 camera at distance 2.5 (the tightest framing).
        cams = orbit_cameras(
            torch.tensor([0.0, 90.0, 180.0]),
            torch.tensor([0.0, 30.0, 60.0]),
            torch.full((3,), 2.5),
            torch.full((3,), 40.0),
            64,
            64,
        )
        pc = means @ cams.viewmats[:, :3, :3].transpose(1, 2) + cams.viewmats[:, None, :3, 3]
        uv = pc[..., :2] / pc[..., 2:] * cams.Ks[:, None, 0, 0, None] + 32
        assert (pc[..., 2] > 0).all() and (uv > 0).all() and (uv < 64).all()


def test_main_colour_dominates():
    obj = make_object("mushroom", "blue", torch.Generator().manual_seed(0))
    rgb = obj.gaussians.base_colors
    bluish = (rgb[:, 2] > rgb[:, 0] + 0.1) & (rgb[:, 2] > rgb[:, 1] + 0.1)
    assert bluish.float().mean() > 0.3


def test_front_is_distinguishable_from_back():
    # The door of a house, the nose of a snowman, the headlights of a car sit at +x (the front).
    gen = torch.Generator().manual_seed(3)
    for kind in ("house", "snowman", "car"):
        g = make_object(kind, "green", gen).gaussians
        rgb, pts = g.base_colors, g.means.detach()
        x = pts[:, 0]
        front, back = x > x.max() - 0.12, x < x.min() + 0.12
        gap = (rgb[front].mean(0) - rgb[back].mean(0)).abs().sum()
        assert gap > 0.1, (kind, float(gap))


def test_caption_and_view_logic():
    assert caption("mushroom", "red", "front") == "a red mushroom, front view"
    assert caption("bird", "orange") == "an orange bird"
    assert caption("cup", None, "overhead") == "a cup, overhead view"
    assert view_of(0.0, 10.0) == "front" and view_of(180.0, 10.0) == "back"
    assert view_of(-90.0, 0.0) == "side" and view_of(30.0, 70.0) == "overhead"
    assert view_of(44.0, 0.0) == "front" and view_of(46.0, 0.0) == "side"
    assert parse("a red mushroom, back view") == ("mushroom", "red", "back")
    assert parse("a mushroom") == ("mushroom", None, "none")


def test_sampled_captions_follow_the_camera_and_the_shares():
    n = 400
    gen = torch.Generator().manual_seed(0)
    az = torch.full((n,), 180.0)
    caps = sample_captions(["chair"] * n, ["pink"] * n, az, torch.zeros(n), gen)
    empty = sum(c == "" for c in caps)
    no_colour = sum(c.startswith(("a chair", "the chair")) for c in caps)
    assert 20 <= empty <= 70 and 80 <= no_colour <= 150
    assert all(c == "" or c.endswith(("chair", ", back view")) for c in caps)
    assert all(not unknown_words(c) for c in caps)


def test_unknown_words():
    assert unknown_words("A Red Mushroom, front view") == []
    assert unknown_words("a red dragon on a red car") == ["dragon", "on"]
    assert len(set(VOCABULARY)) == len(VOCABULARY)
