"""The wheel: every package folder is in pyproject's list, and the top-level configs/ ships as fsd_gs/configs
(a package-dir mapping) that ``--config NAME`` finds in the installed layout, from a folder outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent


def setuptools_table() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_and_configs_is_mapped():
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts) for top in ("fsd_gs", "viewer") for p in (ROOT / top).rglob("__init__.py")
    }
    table = setuptools_table()
    assert set(table["packages"]) == folders | {"fsd_gs.configs"}, "add new package folders to pyproject.toml's packages"
    assert table["package-dir"] == {"fsd_gs.configs": "configs"}
    assert table["package-data"]["fsd_gs.configs"] == ["*.yaml"]
    assert not (ROOT / "fsd_gs" / "configs").exists(), "presets live in the top-level configs/ only"


@pytest.mark.slow
def test_the_wheel_ships_configs_and_finds_them_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("fsd_gs-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    for preset in (ROOT / "configs").glob("*.yaml"):
        assert (site / "fsd_gs" / "configs" / preset.name).read_bytes() == preset.read_bytes()
    for asset in (ROOT / "fsd_gs" / "assets" / "shapes_flow").rglob("*"):  # the built-in flow prior ships whole
        if asset.is_file():
            assert (site / asset.relative_to(ROOT)).read_bytes() == asset.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    code = (
        "from fsd_gs.config import presets_dir; from fsd_gs.train import parse_config; "
        "print(presets_dir()); print(parse_config(['--config', 'shapes-sds', '--prompt', 'a cup']).guidance.guidance_scale)"
    )
    probe = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    folder, scale = probe.stdout.split()
    assert Path(folder) == site / "fsd_gs" / "configs"
    assert float(scale) == yaml.safe_load((ROOT / "configs" / "shapes-sds.yaml").read_text())["guidance"]["guidance_scale"]
    proc = subprocess.run(
        [sys.executable, "-m", "fsd_gs.train", "--config", "shapes-sds", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--guidance.guidance-scale" in proc.stdout
