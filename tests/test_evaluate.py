"""`python -m fsd_gs.evaluate`: the metrics against closed forms, the whole evaluation on tiny synthetic runs, CLIP
on a tiny random-weight CLIP, the gallery in a real browser, and the one-sentence errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fsd_gs.errors import UserError
from fsd_gs.evaluate.evaluation import EvaluateConfig, evaluate
from fsd_gs.evaluate.metrics import (
    colour_entropy,
    cross_fid,
    fid,
    frechet_distance,
    inception_score,
    mean_pairwise_distance,
    seed_halves,
)
from fsd_gs.evaluate.views import ViewConfig
from tests.browser import SKIP_REASON, HeadlessChromium, differs_from, find_chromium


# -- metrics --------------------------------------------------------------------------------------
def test_frechet_distance_matches_closed_form_of_diagonal_gaussians() -> None:
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    closed = float(((m1 - m2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())
    assert frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(closed, rel=1e-9)
    # The same figure estimated from samples of the two Gaussians.
    a = m1 + rng.normal(size=(200_000, 5)) * np.sqrt(s1)
    b = m2 + rng.normal(size=(200_000, 5)) * np.sqrt(s2)
    assert fid(a, b) == pytest.approx(closed, rel=0.02)
    # Full (non-diagonal) covariances: identical Gaussians are at distance 0; a shift adds |dm|^2.
    q = rng.normal(size=(5, 5))
    cov = q @ q.T + 0.1 * np.eye(5)
    assert frechet_distance(m1, cov, m1, cov) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(m1, cov, m2, cov) == pytest.approx(float(((m1 - m2) ** 2).sum()), rel=1e-6)


def test_fid_is_finite_with_fewer_samples_than_dimensions() -> None:
    rng = np.random.default_rng(1)
    value = fid(rng.normal(size=(6, 40)), rng.normal(size=(6, 40)) + 3.0)
    assert math.isfinite(value) and value > 40 * 9 * 0.5  # dominated by the mean shift |3 * 1|^2 * 40


def test_inception_score_of_known_probabilities() -> None:
    assert inception_score(np.full((10, 7), 1 / 7)) == pytest.approx(1.0)
    assert inception_score(np.eye(5)) == pytest.approx(5.0, rel=1e-9)
    assert inception_score(np.eye(5)[[0, 0, 0]]) == pytest.approx(1.0)  # confident but all the same class
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    py = p.mean(0)
    kl = [math.log(1 / py[0]), 0.5 * math.log(0.5 / py[0]) + 0.5 * math.log(0.5 / py[1])]
    assert inception_score(p) == pytest.approx(math.exp(sum(kl) / 2), rel=1e-9)


def test_cross_fid_compares_the_first_and_second_half_of_the_seeds() -> None:
    assert seed_halves([3, 1, 0, 2]) == ([0, 1], [2, 3])
    assert seed_halves([4, 0, 1, 2, 3]) == ([0, 1], [2, 3, 4])
    rng = np.random.default_rng(2)
    feats = {s: rng.normal(size=(6, 3)) + (10.0 if s >= 2 else 0.0) for s in (2, 0, 3, 1)}
    result = cross_fid(feats)
    assert (result.seeds_a, result.seeds_b, result.n_a, result.n_b, result.feature_dim) == ([0, 1], [2, 3], 12, 12, 3)
    assert result.value == pytest.approx(fid(np.concatenate([feats[0], feats[1]]), np.concatenate([feats[2], feats[3]])))
    assert result.value > 250  # the halves differ by 10 in each of 3 dimensions
    same = cross_fid({0: feats[0], 1: feats[1], 2: feats[0], 3: feats[1]})
    assert same.value == pytest.approx(0.0, abs=1e-6)
    assert not result.rank_deficient and cross_fid({0: feats[0], 1: feats[1]}).rank_deficient is False
    assert cross_fid({0: feats[0]}) is None


def test_colour_entropy_and_pairwise_distance() -> None:
    assert colour_entropy(["red"] * 4, 8) == 0.0
    assert colour_entropy([f"c{i}" for i in range(8)], 8) == pytest.approx(1.0)
    assert colour_entropy(["red", "blue"], 8) == pytest.approx(math.log(2) / math.log(8))
    assert mean_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])) == pytest.approx((5 + 0 + 5) / 3)
    assert mean_pairwise_distance(np.zeros((1, 3))) is None


# -- synthetic runs -------------------------------------------------------------------------------
def write_run(
    folder: Path,
    prompt: str,
    method: str,
    seed: int,
    gaussians,
    model: str = "shapes",
    completed: bool = True,
    guidance_scale: float = 100.0,
) -> Path:
    """A run folder as fsd_gs.train writes it: config.yaml (the full TrainConfig), model.ply, report.json."""
    from fsd_gs.config import GuidanceConfig, TrainConfig, method_defaults, to_dict
    from fsd_gs.io.ply import write_ply

    folder.mkdir(parents=True)
    cfg = method_defaults(
        TrainConfig(prompt=prompt, model=model, seed=seed, guidance=GuidanceConfig(guidance_scale=guidance_scale)), method
    )
    (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    write_ply(gaussians, folder / "model.ply")
    (folder / "report.json").write_text(json.dumps({"prompt": prompt, "method": method, "completed": completed}))
    return folder


def world(kind: str, colour: str, seed: int):
    from fsd_gs.shapes.world import make_object

    return make_object(kind, colour, torch.Generator().manual_seed(seed)).gaussians


@pytest.fixture(scope="module")
def shapes_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A batch folder with a manifest: "a mushroom" by fsd at CFG 2.5 (a red and a blue mushroom: diverse) and by sds
    at CFG 7.5 (two red mushrooms: not), an incomplete run, a failed item and a pending one."""
    root = tmp_path_factory.mktemp("batch")
    items = []
    assets = {("fsd", 0): ("red", 1), ("fsd", 1): ("blue", 2), ("sds", 0): ("red", 3), ("sds", 1): ("red", 4)}
    for (method, seed), (colour, gseed) in assets.items():
        rel = f"a-mushroom/{method}/seed{seed}"
        write_run(
            root / rel,
            "a mushroom",
            method,
            seed,
            world("mushroom", colour, gseed),
            guidance_scale={"fsd": 2.5, "sds": 7.5}[method],
        )
        items.append(
            {
                "id": rel,
                "prompt": "a mushroom",
                "method": method,
                "preset": f"shapes-{method}",
                "seed": seed,
                "run_dir": rel,
                "status": "done",
                "error": None,
            }
        )
    write_run(root / "a-mushroom/fsd/seed2", "a mushroom", "fsd", 2, world("mushroom", "green", 5), completed=False)
    items.append(
        {
            "id": "a-mushroom/fsd/seed2",
            "prompt": "a mushroom",
            "method": "fsd",
            "preset": "shapes-fsd",
            "seed": 2,
            "run_dir": "a-mushroom/fsd/seed2",
            "status": "done",
            "error": None,
        }
    )
    items.append(
        {
            "id": "a-mushroom/sds/seed2",
            "prompt": "a mushroom",
            "method": "sds",
            "preset": "shapes-sds",
            "seed": 2,
            "run_dir": None,
            "status": "failed",
            "error": "loss diverged",
        }
    )
    items.append(
        {
            "id": "a-car/fsd/seed0",
            "prompt": "a car",
            "method": "fsd",
            "preset": "shapes-fsd",
            "seed": 0,
            "run_dir": None,
            "status": "pending",
            "error": None,
        }
    )
    (root / "manifest.json").write_text(json.dumps({"format": "fsd_gs.batch/1", "items": items}))
    return root


@pytest.fixture(scope="module")
def shapes_eval(shapes_batch: Path):
    cfg = EvaluateConfig(
        paths=(shapes_batch / "manifest.json",),
        view=ViewConfig(views=4),
        ddim_samples=2,
        ddim_steps=3,
        device="cpu",
        progress=False,
    )
    return evaluate(cfg)


def test_evaluation_of_shapes_runs_end_to_end(shapes_eval, shapes_batch: Path) -> None:
    res = shapes_eval
    assert res.folder.parent == shapes_batch and res.folder.name.startswith("evaluation-")
    for name in ("evaluation.json", "evaluation.md", "gallery/index.html"):
        assert (res.folder / name).is_file()
    by = {r.method: r for r in res.results}
    assert set(by) == {"fsd", "sds", "truth", "ddim"}
    fsd, sds, truth = by["fsd"], by["sds"], by["truth"]
    assert fsd.seeds == [0, 1] and fsd.views_per_seed == 4
    assert fsd.seed_colours == {0: "red", 1: "blue"} and sds.seed_colours == {0: "red", 1: "red"}
    assert fsd.colour_entropy == pytest.approx(math.log(2) / math.log(8)) and sds.colour_entropy == 0.0
    assert fsd.quality >= 0.75 and sds.quality >= 0.75 and truth.quality >= 0.75  # the judge sees mushrooms
    assert fsd.cross_fid.n_a == 4 and fsd.cross_fid.feature_dim == 384 and fsd.cross_fid.rank_deficient
    assert fsd.cross_fid.value > sds.cross_fid.value  # a red vs a blue mushroom differ more than two red ones
    assert fsd.pairwise_distance > sds.pairwise_distance
    assert 1.0 <= fsd.inception_score <= 13.0
    assert by["ddim"].seeds == [0, 1] and by["ddim"].cross_fid is None and by["ddim"].views_per_seed == 1
    # Each row names the CFG it was made with; the DDIM samples use FSD's (what FSD distils towards).
    assert (fsd.guidance_scale, sds.guidance_scale, truth.guidance_scale, by["ddim"].guidance_scale) == (2.5, 7.5, None, 2.5)
    reasons = {m["id"]: m["reason"] for m in res.missing}
    assert "completed is false" in reasons["a-mushroom/fsd/seed2"]
    assert "failed: loss diverged" in reasons["a-mushroom/sds/seed2"] and "pending" in reasons["a-car/fsd/seed0"]
    data = json.loads((res.folder / "evaluation.json").read_text())
    assert data["format"] == "fsd_gs.evaluate/1" and len(data["missing"]) == 3
    summary = {row["method"]: row for row in data["summary"]}
    assert summary["fsd"]["cross_fid"]["mean"] == pytest.approx(fsd.cross_fid.value)
    md = (res.folder / "evaluation.md").read_text()
    assert "| shapes (built-in) | FSD | 2.5 | 1 x 2 |" in md and "| shapes (built-in) | SDS | 7.5 | 1 x 2 |" in md
    assert "| shapes (built-in) | DDIM images | 2.5 |" in md and "| shapes (built-in) | world objects (truth) | - |" in md
    assert summary["sds"]["guidance_scales"] == [7.5] and summary["truth"]["guidance_scales"] == []
    assert md.index("| shapes (built-in) | SDS") < md.index("| shapes (built-in) | FSD")
    # Never overwrite: the same --out again is refused.
    with pytest.raises(UserError, match="fresh --out"):
        evaluate(EvaluateConfig(paths=(shapes_batch,), out=res.folder, view=ViewConfig(views=4), ddim_samples=0))


def test_ddim_samples_use_the_fsd_runs_cfg_whatever_the_method_order() -> None:
    from fsd_gs.evaluate.evaluation import ddim_guidance
    from fsd_gs.evaluate.runs import Run, shared_guidance

    def runs(method: str, scale: float) -> dict[int, Run]:
        return {s: Run(Path(f"/r/{method}{s}"), "a cup", method, "shapes", s, scale) for s in (0, 1)}

    methods = {"sds": runs("sds", 7.5), "fsd": runs("fsd", 2.5)}
    assert ddim_guidance(EvaluateConfig(), methods) == 2.5
    assert ddim_guidance(EvaluateConfig(ddim_guidance=4.0), methods) == 4.0
    assert ddim_guidance(EvaluateConfig(), {"sds": runs("sds", 7.5)}) == 7.5
    assert shared_guidance([*runs("sds", 7.5).values(), *runs("fsd", 2.5).values()]) is None
    assert shared_guidance(runs("fsd", 2.5).values()) == 2.5


def test_folder_search_finds_the_same_runs(shapes_batch: Path, tmp_path: Path) -> None:
    from fsd_gs.evaluate.runs import find_runs, group_runs

    found = find_runs([shapes_batch / "a-mushroom"])  # no manifest inside: recursive search
    groups, dropped = group_runs(found.runs)
    assert {k: sorted(v) for k, v in groups.items()} == {
        ("a mushroom", "fsd", "shapes"): [0, 1],
        ("a mushroom", "sds", "shapes"): [0, 1],
    }
    assert len(found.missing) == 1 and not dropped


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None, reason=SKIP_REASON)
def test_gallery_images_load_and_are_not_blank_in_chromium(shapes_eval) -> None:
    index = shapes_eval.folder / "gallery" / "index.html"
    with HeadlessChromium(1400, 900) as browser:
        browser.open(index.as_uri())
        browser.wait_for_text(["a mushroom", "FSD", "SDS", "CROSS-FID"], timeout=30)
        n = browser.evaluate("document.images.length")
        assert n == 2 + 2 + 2 + 2  # fsd, sds, truth, ddim x 2
        for _ in range(100):
            if browser.evaluate("[...document.images].every(i => i.complete)"):
                break
        loaded = browser.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert all(c and w == 64 and h == 64 for c, w, h in loaded), loaded
        for i in range(n):
            rect = browser.evaluate(
                f"(() => {{ const im = document.images[{i}]; im.scrollIntoView({{block: 'center'}});"
                " const r = im.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })()"
            )
            x0, y0, x1, y1 = (int(round(v)) for v in rect)
            shot = browser.screenshot()[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
            drawn = differs_from(shot, (255, 255, 255)).mean()
            assert shot.size and drawn > 0.02, f"image {i} looks blank ({drawn:.3f} of its pixels differ from white)"


# -- CLIP -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight CLIP (32 px images) with an offline tokenizer and image processor, saved like a hub model."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from fsd_gs.prior.random_pipeline import save_offline_tokenizer

    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    ids = save_offline_tokenizer(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77, **ids
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
        ),
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_clip_score_is_100_times_the_cosine(tiny_clip_dir: Path) -> None:
    from fsd_gs.evaluate.scorers import ClipScorer, load_clip

    model, processor = load_clip(str(tiny_clip_dir))
    scorer = ClipScorer(model, processor, "tiny")
    images = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    scores = scorer.score(images, "a red mushroom")
    img, txt = scorer.image_embeddings(images), scorer.text_embedding("a red mushroom")
    expected = 100 * torch.nn.functional.cosine_similarity(img, txt[None], dim=1)
    assert np.allclose(scores.quality, expected.double().numpy(), atol=1e-5)
    assert scores.features.shape == (3, 24) and scores.probs is None
    assert len(set(np.round(scores.quality, 6))) == 3  # different images, different scores


def test_evaluation_with_clip_for_other_backbones(tmp_path: Path, tiny_clip_dir: Path) -> None:
    from fsd_gs.gaussians import GaussiansConfig, random_ball_gaussians

    for method in ("fsd", "sds"):
        for seed in (0, 1, 2, 3):
            g = random_ball_gaussians(GaussiansConfig(num_points=300), torch.Generator().manual_seed(10 * seed + len(method)))
            write_run(tmp_path / "runs" / f"{method}-{seed}", "a photo of a teapot", method, seed, g, model="tiny-sd-folder")
    res = evaluate(
        EvaluateConfig(
            paths=(tmp_path / "runs",),
            out=tmp_path / "eval",
            view=ViewConfig(views=3),
            size=32,
            clip=str(tiny_clip_dir),
            is_classifier="none",
            ddim_samples=0,
            device="cpu",
            progress=False,
        )
    )
    assert {r.method for r in res.results} == {"fsd", "sds"}
    for r in res.results:
        assert -100 <= r.quality <= 100 and r.inception_score is None and r.seed_colours is None
        assert r.cross_fid.seeds_a == [0, 1] and (r.cross_fid.n_a, r.cross_fid.feature_dim) == (6, 24)
    md = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| tiny-sd-folder | FSD | 100 | 1 x 4 |" in md and "CLIP score" in md and "colour entropy |" not in md.split("\n\n")[2]


# -- errors ---------------------------------------------------------------------------------------
def test_no_runs_found_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fsd_gs.evaluate.__main__ import main

    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no finished runs") and "\n" not in err
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "m.json").write_text("{}")
    assert main([str(tmp_path / "m.json")]) == 2
    assert "is not a batch manifest" in capsys.readouterr().err


def test_unknown_clip_model_offline_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from fsd_gs.evaluate.__main__ import main
    from fsd_gs.gaussians import GaussiansConfig, random_ball_gaussians

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_run(
        tmp_path / "runs" / "r0",
        "a photo of a teapot",
        "fsd",
        0,
        random_ball_gaussians(GaussiansConfig(num_points=50), torch.Generator().manual_seed(0)),
        model="sd-x",
    )
    assert main([str(tmp_path / "runs"), "--clip", "nobody-here/no-such-clip", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert "the CLIP model 'nobody-here/no-such-clip' is not available" in err and "\n" not in err
    assert not (tmp_path / "e").exists()  # nothing written on bad input


def test_runs_with_another_noise_are_their_own_method() -> None:
    """FSD with surface noise is evaluated as its own row, not mixed into FSD's seeds; SDS's own noise is plain SDS."""
    from fsd_gs.evaluate.report import method_label
    from fsd_gs.evaluate.runs import method_name

    assert method_name({"method": "fsd", "noise": {"kind": "surface"}}) == "fsd-surface"
    assert method_name({"method": "fsd", "noise": {"kind": "worldmap"}}) == "fsd"
    assert method_name({"method": "sds", "noise": {"kind": "random"}}) == "sds"
    assert method_name({"method": "fsd"}) == "fsd"
    assert method_label("fsd-surface") == "FSD, surface noise"


def test_cfg_sweep_measures_every_kind_at_every_scale() -> None:
    """The sweep the presets' CFG is chosen from: one row per scale, every kind colour-free, figures in [0, 1]."""
    from fsd_gs.prior.shapes import load_shapes_prior
    from fsd_gs.shapes.evaluate import cfg_sweep
    from fsd_gs.shapes.judge import load_judge
    from fsd_gs.shapes.world import KINDS

    rows = cfg_sweep(load_shapes_prior("cpu"), load_judge(None), (1.0, 3.0), n_samples=1, n_prompts=1, steps=2)
    assert [r["guidance_scale"] for r in rows] == [1.0, 3.0]
    for r in rows:
        assert [x["prompt"].split()[-1] for x in r["rows"]] == list(KINDS)
        assert 0.0 <= r["kind_min"] <= r["kind"] <= 1.0 and 0.0 <= r["entropy_min"] <= r["entropy_ratio"] + 1e-9


def test_progress_without_a_terminal_and_pinned_threads(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like the train command: a plain progress line (count, rate, ETA) when stdout is no terminal, and torch's CPU
    threads pinned to --threads while rendering and scoring (restored afterwards)."""
    import fsd_gs.evaluate.evaluation as evaluation

    seen: list[int] = []
    render = evaluation.render_views

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return render(*args, **kwargs)

    monkeypatch.setattr(evaluation, "render_views", spy)
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"r{seed}", "a cup", "fsd", seed, world("cup", "red", seed))
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1
    evaluate(
        EvaluateConfig(
            paths=(tmp_path / "runs",), out=tmp_path / "e", view=ViewConfig(views=2), device="cpu", threads=threads, gallery=False
        )
    )
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("evaluate: asset ")]
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]  # 2 runs + 2 world objects
    assert all("assets/s eta" in line for line in lines)
    assert seen == [threads] * 4 and torch.get_num_threads() == before
    evaluate(
        EvaluateConfig(
            paths=(tmp_path / "runs",),
            out=tmp_path / "quiet",
            view=ViewConfig(views=2),
            device="cpu",
            gallery=False,
            progress=False,
        )
    )
    assert "evaluate: asset" not in capsys.readouterr().out
    with pytest.raises(UserError, match="--threads"):
        evaluate(EvaluateConfig(paths=(tmp_path / "runs",), threads=-1))
