"""fsd_gs.image2d end to end on tiny random-weight pipelines (CPU): files, folders, determinism, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fsd_gs.image2d import METHOD_DEFAULTS, Image2DConfig, main, seed_noise

ROOT = Path(__file__).resolve().parent.parent


def args_for(model: Path, out: Path, method: str, *extra: str, seeds=("0", "1")) -> list[str]:
    return [
        "--prompt",
        "a red mushroom",
        "--method",
        method,
        "--seed",
        *seeds,
        "--steps",
        "3",
        "--model",
        str(model),
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def run_ok(argv: list[str], capsys) -> Path:
    assert main(argv) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder.is_dir()
    return folder


def load_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("method", ["fsd", "sds", "nfsd", "csd", "vsd", "ddim"])
def test_end_to_end_writes_images_grid_and_prints_folder_last(method, tiny_sd_dir, tmp_path, capsys):
    folder = run_ok(args_for(tiny_sd_dir, tmp_path, method), capsys)
    assert folder.parent.parent == tmp_path and folder.name.endswith(method)
    for seed in (0, 1):
        assert load_png(folder / f"seed{seed}.png").shape == (64, 64, 3)
    grid = load_png(folder / "grid.png")
    assert grid.shape == (64, 64 * 2 + 4, 3)
    np.testing.assert_array_equal(grid[:, :64], load_png(folder / "seed0.png"))
    np.testing.assert_array_equal(grid[:, 68:], load_png(folder / "seed1.png"))
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["method"] == method and settings["steps"] == 3 and settings["height"] == 64
    assert settings["guidance_scale"] == METHOD_DEFAULTS[method].guidance_scale
    report = json.loads((folder / "report.json").read_text())
    assert report["seeds"] == [0, 1] and report["wall_time_s"] > 0
    assert not np.array_equal(load_png(folder / "seed0.png"), load_png(folder / "seed1.png"))


def test_runs_never_share_a_folder_and_are_deterministic(tiny_sd_dir, tmp_path, capsys):
    first = run_ok(args_for(tiny_sd_dir, tmp_path, "fsd"), capsys)
    second = run_ok(args_for(tiny_sd_dir, tmp_path, "fsd"), capsys)
    assert first != second
    np.testing.assert_array_equal(load_png(first / "seed1.png"), load_png(second / "seed1.png"))


def test_a_seed_gives_the_same_image_alone_or_in_a_batch(tiny_sd_dir, tmp_path, capsys):
    batch = run_ok(args_for(tiny_sd_dir, tmp_path, "fsd"), capsys)
    alone = run_ok(args_for(tiny_sd_dir, tmp_path, "fsd", seeds=("1",)), capsys)
    diff = np.abs(load_png(batch / "seed1.png") - load_png(alone / "seed1.png"))
    assert diff.max() <= 2


def test_sds_draws_fresh_noise_where_fsd_keeps_one(tiny_sd_dir, tmp_path, capsys):
    same = ("--guidance-scale", "7.5", "--lr", "0.05")
    fsd = run_ok(args_for(tiny_sd_dir, tmp_path, "fsd", *same), capsys)
    sds = run_ok(args_for(tiny_sd_dir, tmp_path, "sds", *same), capsys)
    assert np.abs(load_png(fsd / "seed0.png") - load_png(sds / "seed0.png")).max() > 0


def test_pixel_prior_end_to_end(tiny_pixel_dir, tmp_path, capsys):
    for method in ("fsd", "ddim"):
        folder = run_ok(args_for(tiny_pixel_dir, tmp_path, method, "--height", "24", "--width", "40"), capsys)
        assert load_png(folder / "seed0.png").shape == (24, 40, 3)


def test_method_defaults_are_the_papers_table():
    assert METHOD_DEFAULTS["sds"].steps == 500 and METHOD_DEFAULTS["sds"].guidance_scale == 100.0
    assert METHOD_DEFAULTS["sds"].lr == 2e-2 and METHOD_DEFAULTS["sds"].fresh_noise
    assert (METHOD_DEFAULTS["fsd"].steps, METHOD_DEFAULTS["fsd"].guidance_scale, METHOD_DEFAULTS["fsd"].lr) == (500, 7.5, 3e-3)
    assert not METHOD_DEFAULTS["fsd"].fresh_noise
    assert (METHOD_DEFAULTS["ddim"].steps, METHOD_DEFAULTS["ddim"].guidance_scale) == (50, 7.5)
    for name in ("nfsd", "vsd", "csd"):  # Tab. 3's NFSD and VSD columns (CSD, absent from it, takes NFSD's)
        settings = METHOD_DEFAULTS[name]
        assert (settings.steps, settings.guidance_scale, settings.lr, settings.fresh_noise) == (500, 7.5, 2e-2, True)
    cfg = Image2DConfig(prompt="x", method="fsd", steps=7, lr=0.1)
    assert (cfg.settings().steps, cfg.settings().lr, cfg.settings().guidance_scale) == (7, 0.1, 7.5)


def test_seed_noise_is_per_seed_and_reproducible():
    a = seed_noise([0, 1], (4, 8, 8))
    assert a.shape == (2, 4, 8, 8)
    torch.testing.assert_close(a, seed_noise([0, 1], (4, 8, 8)))
    torch.testing.assert_close(a[1:], seed_noise([1], (4, 8, 8)))
    assert not torch.allclose(a[0], a[1])


def test_help_documents_every_field(capsys):
    import dataclasses

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for field in dataclasses.fields(Image2DConfig):
        assert "--" + field.name.replace("_", "-") in text
    assert "fixed noise per seed" in text  # field docstrings become the help


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", ""], "prompt is empty"),
        (["--height", "60"], "multiples of 8"),
        (["--model", "/nonexistent/pipeline"], "does not exist"),
        (["--seed", "1", "1"], "repeated"),
        (["--steps", "0"], "steps"),
        (["--t-min", "0.9", "--t-max", "0.5"], "t-min"),
        (["--height", "100000"], "--height must be a number of pixels from 1 to 4096"),
        (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295"),
        (["--seed", "99999999999999999999999"], "--seed must be a whole number from 0 to 4294967295"),
        (["--threads", "-1"], "--threads must be >= 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_folder(extra, message, tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*args_for(tiny_sd_dir, out, "fsd"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists() or not any(out.rglob("*.png"))


@pytest.mark.slow
def test_module_entry_point_exit_code(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "fsd_gs.image2d",
        "--prompt",
        "a cat",
        "--model",
        str(tmp_path / "missing"),
        "--output-dir",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: ") and "missing" in done.stderr


def test_vsd_is_one_particle_per_seed(tiny_sd_dir, tmp_path, capsys):
    """VSD trains one LoRA per seed: a seed's image is the same alone or next to other seeds."""
    batch = run_ok(args_for(tiny_sd_dir, tmp_path, "vsd"), capsys)
    alone = run_ok(args_for(tiny_sd_dir, tmp_path, "vsd", seeds=("1",)), capsys)
    diff = np.abs(load_png(batch / "seed1.png") - load_png(alone / "seed1.png"))
    assert diff.max() <= 2  # the batched VAE decode may round a few pixels differently
    settings = json.loads((batch / "settings.json").read_text())
    assert settings["method_options"]["vsd"]["rank"] == 4


def test_progress_without_a_terminal_is_plain_lines(tiny_sd_dir, tmp_path, capsys):
    argv = [a for a in args_for(tiny_sd_dir, tmp_path, "fsd") if a != "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("fsd: step ")]
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3"] and "steps/s" in lines[-1]
    assert "\r" not in captured.out + captured.err and "it/s" not in captured.err  # no tqdm bar


def test_torch_threads_are_pinned_like_train(tiny_sd_dir, tmp_path, capsys, monkeypatch):
    import fsd_gs.image2d as image2d

    seen = []
    original = image2d.generate

    def spy(cfg, prior):
        seen.append(torch.get_num_threads())
        return original(cfg, prior)

    monkeypatch.setattr(image2d, "generate", spy)
    before = torch.get_num_threads()
    run_ok(args_for(tiny_sd_dir, tmp_path, "fsd", "--threads", "1"), capsys)
    assert seen == [1] and torch.get_num_threads() == before  # pinned inside, restored after


def test_ctrl_c_stops_with_one_line_and_leaves_no_folder(tiny_sd_dir, tmp_path, capsys, monkeypatch):
    import fsd_gs.image2d as image2d

    def interrupted(cfg, prior):
        raise KeyboardInterrupt

    monkeypatch.setattr(image2d, "generate", interrupted)
    out = tmp_path / "out"
    assert main(args_for(tiny_sd_dir, out, "fsd")) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("stopped by SIGINT") and "no images were written" in err
    assert not out.exists() or not any(out.iterdir())
