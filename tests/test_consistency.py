"""3D consistency (fsd_gs/evaluate/consistency.py): the clear cameras, view accuracy, the Janus flag and confusion;
a Janus asset built on purpose (a world object turned 180 deg) flagged through the judge and the whole evaluation
(JSON, markdown, gallery) while the world's own object is not; the CLIP view probe on a tiny random CLIP."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fsd_gs.evaluate.consistency import (
    EXPECTED_VIEWS,
    add_confusion,
    clear_cameras,
    consistency,
    empty_confusion,
    has_front,
    probe_phrases,
)
from fsd_gs.evaluate.evaluation import EvaluateConfig, evaluate
from fsd_gs.evaluate.views import ViewConfig
from fsd_gs.gaussians import Gaussians
from tests.test_evaluate import tiny_clip_dir, world, write_run  # noqa: F401  (tiny_clip_dir: a fixture)


# -- pure functions -------------------------------------------------------------------------------
def test_clear_cameras_are_the_nearest_to_0_90_180_270() -> None:
    assert clear_cameras([i * 15.0 for i in range(24)]) == [0, 6, 12, 18]
    assert clear_cameras([i * 45.0 for i in range(8)]) == [0, 2, 4, 6]
    # 6 views (0, 60, ..., 300): 90 and 270 fall between two cameras, the first one stands in.
    assert clear_cameras([i * 60.0 for i in range(6)]) == [0, 1, 3, 4]
    # 5 views (0, 72, 144, 216, 288): 180 -> 144 or 216 (36 deg each), 270 -> 288; azimuths wrap.
    assert clear_cameras([0.0, 72.0, 144.0, -144.0, -72.0]) == [0, 1, 2, 4]
    with pytest.raises(ValueError):
        clear_cameras([])


def test_consistency_of_reads() -> None:
    az = [i * 90.0 for i in range(4)]
    right = consistency(["front", "side", "back", "side"], az)
    assert right.view_accuracy == 1.0 and not right.janus and right.clear == [0, 1, 2, 3]
    janus = consistency(["front", "front", "front", "front"], az)
    assert janus.view_accuracy == 0.25 and janus.janus
    assert janus.confusion["back"]["front"] == 1 and janus.confusion["side"]["front"] == 2
    half = consistency(["front", "overhead", "side", "side"], az)
    assert half.view_accuracy == 0.5 and not half.janus  # the back reads "side": wrong, but no second front
    for c in (right, janus, half):
        assert sum(n for row in c.confusion.values() for n in row.values()) == 4
        assert set(c.confusion) == set(EXPECTED_VIEWS)
    # With 24 views only the clear cameras count; the others may read anything.
    reads = ["overhead"] * 24
    reads[0], reads[6], reads[12], reads[18] = "front", "side", "back", "side"
    assert consistency(reads, [i * 15.0 for i in range(24)]).view_accuracy == 1.0
    total = add_confusion(add_confusion(empty_confusion(), janus.confusion), right.confusion)
    assert total["back"] == {"front": 1, "side": 0, "back": 1, "overhead": 0}
    with pytest.raises(ValueError, match="unknown view"):
        consistency(["front", "up", "back", "side"], az)
    with pytest.raises(ValueError, match="reads for"):
        consistency(["front"], az)


def test_which_prompts_have_a_front() -> None:
    assert has_front("a red chair", "shapes") and has_front("a fish", "shapes")
    assert not has_front("a mushroom", "shapes") and not has_front("a blue cup", "shapes")
    assert has_front("a corgi wearing a top hat", "sd") and has_front("two horses in a field", "sd")
    assert has_front("A DSLR photo of an Astronaut", "sd")
    assert not has_front("a vase of flowers", "sd") and not has_front("a ceramic teapot", "sd")
    assert probe_phrases("a car") == {
        "front": "the front of a car",
        "side": "the side of a car",
        "back": "the back of a car",
        "overhead": "the top of a car",
    }


# -- a Janus asset on purpose ---------------------------------------------------------------------
def turned(g: Gaussians) -> Gaussians:
    """The Gaussians turned 180 deg about z (up): x, y -> -x, -y; rotations q -> q_z(180) * q (wxyz)."""
    params = {k: v.detach().clone() for k, v in g.params.items()}
    params["means"][:, :2] *= -1
    w, x, y, z = params["quats"].unbind(-1)
    params["quats"] = torch.stack([-z, -y, x, w], dim=-1)
    return Gaussians(params, g.sh_degree, g.active_sh_degree)


def test_the_judge_flags_a_turned_world_object_and_not_the_object(tmp_path: Path) -> None:
    from fsd_gs.evaluate.scorers import JudgeScorer
    from fsd_gs.evaluate.views import eval_cameras, render_views
    from fsd_gs.shapes.judge import load_judge

    scorer = JudgeScorer(load_judge())
    cams = eval_cameras(ViewConfig(), 64)
    for kind in ("car", "chair"):
        g = world(kind, "red", 3)
        upright = scorer.score(render_views(g, cams, (1, 1, 1)), f"a {kind}")
        back_to_front = scorer.score(render_views(turned(g), cams, (1, 1, 1)), f"a {kind}")
        assert upright.views is not None and back_to_front.views is not None
        a, b = consistency(upright.views, cams.azimuth.tolist()), consistency(back_to_front.views, cams.azimuth.tolist())
        assert a.view_accuracy == 1.0 and not a.janus, (kind, a.reads)
        assert b.janus and b.view_accuracy <= 0.5, (kind, b.reads)


@pytest.fixture(scope="module")
def janus_eval(tmp_path_factory: pytest.TempPathFactory):
    """ "a car" by "fsd" = two world cars (consistent) and by "sds" = the same two cars turned 180 deg (Janus),
    "a mushroom" by both (no front: not counted); 8 views, the truth row on, no DDIM."""
    root = tmp_path_factory.mktemp("janus")
    for seed in (0, 1):
        car = world("car", ("red", "blue")[seed], 20 + seed)
        write_run(root / f"car-fsd-{seed}", "a car", "fsd", seed, car)
        write_run(root / f"car-sds-{seed}", "a car", "sds", seed, turned(car))
        for method in ("fsd", "sds"):
            write_run(root / f"mushroom-{method}-{seed}", "a mushroom", method, seed, world("mushroom", "green", 30 + seed))
    cfg = EvaluateConfig(paths=(root,), out=root / "eval", view=ViewConfig(views=8), device="cpu", progress=False)
    return evaluate(cfg)


def test_evaluation_flags_the_janus_assets(janus_eval) -> None:
    by = {(r.prompt, r.method): r for r in janus_eval.results}
    assert set(by) == {(p, m) for p in ("a car", "a mushroom") for m in ("fsd", "sds", "truth")}
    fsd, sds, truth = by[("a car", "fsd")], by[("a car", "sds")], by[("a car", "truth")]
    assert fsd.has_front and fsd.view_accuracy == 1.0 and fsd.janus_rate == 0.0 and fsd.janus_seeds == []
    assert truth.view_accuracy == 1.0 and truth.janus_rate == 0.0  # the reference row
    assert sds.janus_rate == 1.0 and sds.janus_seeds == [0, 1] and sds.view_accuracy <= 0.5
    for r in (fsd, sds, truth):
        assert sum(n for row in r.confusion.values() for n in row.values()) == 4 * len(r.seeds)
        assert r.clear_azimuths == [0.0, 90.0, 180.0, 270.0] and all(len(v) == 8 for v in r.view_reads.values())
    assert sds.confusion["back"]["front"] == 2 and fsd.confusion["back"]["back"] == 2
    mushroom = by[("a mushroom", "fsd")]
    assert not mushroom.has_front and mushroom.view_accuracy is None and mushroom.janus_rate is None
    assert len(mushroom.view_reads[0]) == 8  # still read (shown in the gallery), just not counted


def test_json_and_markdown_have_the_consistency_columns(janus_eval) -> None:
    data = json.loads((janus_eval.folder / "evaluation.json").read_text())
    summary = {row["method"]: row for row in data["summary"]}
    assert summary["sds"]["janus_rate"]["mean"] == 1.0 and summary["fsd"]["janus_rate"]["mean"] == 0.0
    assert summary["sds"]["janus_rate"]["count"] == 1  # one prompt with a front
    assert summary["fsd"]["view_accuracy"]["mean"] == 1.0 and summary["sds"]["front_prompts"] == ["a car"]
    assert summary["sds"]["confusion"]["back"]["front"] == 2
    results = {(r["prompt"], r["method"]): r for r in data["results"]}
    assert results[("a car", "sds")]["janus_seeds"] == [0, 1] and results[("a mushroom", "sds")]["janus_rate"] is None
    md = (janus_eval.folder / "evaluation.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| backbone | method |"))
    assert "| view accuracy | Janus |" in header
    sds_row = next(line for line in md.splitlines() if line.startswith("| shapes (built-in) | SDS |"))
    assert "| 100.0% ± 0.0% |" in sds_row
    assert "| a car | shapes (built-in) | SDS |" in md and "100.0% (0 1)" in md
    assert "## View confusion" in md and "back: front 2" in md
    assert (
        "- Reference: the world's objects read view accuracy 1.00, Janus 0.0% on 1 prompt(s) with a front: "
        "the view reader is calibrated." in md
    )


def test_the_gallery_marks_janus_seeds_and_shows_the_reads(janus_eval) -> None:
    page = (janus_eval.folder / "gallery" / "index.html").read_text()
    assert page.count("<figure class='janus'>") == 2 and page.count("JANUS</span>") == 2
    assert page.index("<figure class='janus'>") > page.index("<h2>a car")  # the turned cars, under "a car"
    assert "view read per camera: 0°: front, 45°:" in page
    letters = re.sub(r" title='[^']*'", "", page)
    assert letters.count("<div class='reads'><span>F</span><span>S</span><span>B</span><span>S</span></div>") == 4  # cars
    assert "expected back" in page and "class='wrong'" in page


# -- the CLIP view probe --------------------------------------------------------------------------
def test_clip_view_probe_reads_the_nearest_phrase(tiny_clip_dir: Path) -> None:  # noqa: F811
    from fsd_gs.evaluate.scorers import ClipScorer, load_clip

    model, processor = load_clip(str(tiny_clip_dir))
    scorer = ClipScorer(model, processor, "tiny")
    phrases = probe_phrases("a car")
    # An image embedding equal to a phrase's text embedding reads that phrase's view.
    embeddings = torch.stack([scorer.text_embedding(p) for p in phrases.values()])
    assert scorer.view_reads(embeddings, "a car") == list(phrases)
    assert scorer.view_reads(-embeddings[:1] + 3 * embeddings[2:3], "a car") == ["back"]
    scores = scorer.score(torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0)), "a car")
    assert scores.views is not None and len(scores.views) == 3 and set(scores.views) <= set(phrases)


def test_evaluation_with_clip_reads_views_of_prompts_with_a_front(tmp_path: Path, tiny_clip_dir: Path) -> None:  # noqa: F811
    from fsd_gs.gaussians import GaussiansConfig, random_ball_gaussians

    for prompt in ("a photo of a dog", "a photo of a teapot"):
        for seed in (0, 1):
            g = random_ball_gaussians(GaussiansConfig(num_points=200), torch.Generator().manual_seed(seed))
            write_run(tmp_path / "runs" / f"{prompt[-3:]}-{seed}", prompt, "fsd", seed, g, model="tiny-sd-folder")
    res = evaluate(
        EvaluateConfig(
            paths=(tmp_path / "runs",),
            out=tmp_path / "eval",
            view=ViewConfig(views=6),
            size=32,
            clip=str(tiny_clip_dir),
            is_classifier="none",
            device="cpu",
            progress=False,
        )
    )
    by = {r.prompt: r for r in res.results}
    dog, teapot = by["a photo of a dog"], by["a photo of a teapot"]
    assert dog.has_front and dog.view_accuracy is not None and dog.clear_azimuths == [0.0, 60.0, 180.0, 240.0]
    assert dog.confusion is not None and sum(n for row in dog.confusion.values() for n in row.values()) == 8
    assert not teapot.has_front and teapot.janus_rate is None and len(teapot.view_reads[1]) == 6
    data = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert data["summary"][0]["front_prompts"] == ["a photo of a dog"]
    assert "CLIP view probe" in data["scorers"]["tiny-sd-folder"]["views"]


def test_a_miscalibrated_reference_row_is_a_warning(janus_eval) -> None:
    import dataclasses

    from fsd_gs.evaluate.report import reference_check, summarise

    # The turned cars as if they were the world's objects: the reference check must say the reader is not to be trusted.
    wrong = [dataclasses.replace(r, method="truth") for r in janus_eval.results if r.method == "sds"]
    (row,) = summarise(wrong)
    assert "WARNING" in reference_check(row) and "Janus 100.0%" in reference_check(row)


def test_the_shipped_view_head_reads_the_worlds_front_kinds() -> None:
    """eval_shapes_prior.py's "views" check (one object per kind here; 8 in the check): 1.00 and 0% Janus."""
    from fsd_gs.shapes.evaluate import world_view_consistency
    from fsd_gs.shapes.judge import load_judge
    from fsd_gs.shapes.world import FRONT_KINDS

    res = world_view_consistency(load_judge(), objects_per_kind=1, seed_offset=77_000)
    assert list(res["per_kind"]) == list(FRONT_KINDS)
    assert res["overall"] == {"view_accuracy": 1.0, "janus": 0.0, "kind": 1.0, "colour": 1.0}, res["per_kind"]
    assert res["confusion"]["back"]["back"] == len(FRONT_KINDS) and res["confusion"]["side"]["side"] == 2 * len(FRONT_KINDS)
