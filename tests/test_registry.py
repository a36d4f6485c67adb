"""The registries (fsd_gs/registry.py and one per axis), entry-point plugins, and the toy plugin end to end.

The toy plugin (tests/plugins/, the worked example of docs/extending.md) is "installed" by putting a folder
with its package and a .dist-info on sys.path / PYTHONPATH; the slow tests show that, with no file of fsd_gs or
of the tests edited, the train and export commands offer its entries, a run uses them, and the contract tests
(tests/test_contract_*.py) collect and pass for them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fsd_gs.config import PresetWarning, base_config
from fsd_gs.errors import UserError
from fsd_gs.export import EXPORT_FORMATS
from fsd_gs.methods import METHODS
from fsd_gs.noise import NOISE_KINDS
from fsd_gs.prior.detectors import PRIOR_DETECTORS
from fsd_gs.registry import Registry
from tests.contract import TINY
from tests.plugins import TOY_FORMAT, TOY_METHOD, TOY_NOISE, build_toy_plugin

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str


def plugin_env(site: Path) -> dict[str, str]:
    """The environment of a child process that sees the toy plugin (and this checkout's fsd_gs)."""
    path = os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}


# -- the registry --------------------------------------------------------------------------------
def test_a_registry_is_an_ordered_mapping_with_one_sentence_errors():
    registry: Registry[Entry] = Registry("widget", "--widget")
    for name in ("b", "a"):
        registry.register(Entry(name))
    assert list(registry) == ["b", "a"] and registry.names() == ("b", "a") and registry["a"] == Entry("a")
    assert registry.literal("c").__args__ == ("b", "a", "c")
    with pytest.raises(UserError) as info:
        registry.get_entry("z")
    assert str(info.value) == "--widget must be one of b, a, got 'z'"
    with pytest.raises(ValueError, match="twice"):
        registry.register(Entry("a"))
    with pytest.raises(ValueError, match="identifier"):
        registry.register(Entry("not a name"))
    registry.unregister("b")
    assert list(registry) == ["a"]


def test_the_built_in_entries_of_each_axis():
    assert list(METHODS)[:5] == ["fsd", "sds", "nfsd", "csd", "vsd"]
    assert list(NOISE_KINDS)[:4] == ["worldmap", "constant", "random", "surface"]
    assert list(EXPORT_FORMATS)[:5] == ["ply", "ply_compressed", "splat", "glb", "mesh"]
    assert list(PRIOR_DETECTORS) == [
        "shapes",
        "mvdream_checkpoint",
        "mvdream_folder",
        "sd3",
        "latent_diffusion",
        "pixel_diffusion",
    ]
    assert all(name == entry.name for registry in (METHODS, NOISE_KINDS, EXPORT_FORMATS) for name, entry in registry.items())


def test_entry_points_add_entries_and_a_misnamed_one_is_refused(tmp_path, monkeypatch):
    site = build_toy_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    for group, name in (("fsd_gs.methods", TOY_METHOD), ("fsd_gs.noise", TOY_NOISE), ("fsd_gs.export", TOY_FORMAT)):
        registry: Registry = Registry("entry", "--x", entry_point_group=group)
        assert registry.names() == (name,) and registry[name].name == name
    info = site / "toy_fsd_plugin-0.1.dist-info" / "entry_points.txt"
    info.write_text(info.read_text().replace(f"{TOY_METHOD} =", "renamed ="))
    with pytest.raises(ValueError, match="renamed"):
        Registry("method", "--method", entry_point_group="fsd_gs.methods").names()


def test_a_method_without_the_models_preset_says_so_in_one_sentence():
    METHODS.register(dataclasses.replace(METHODS["sds"], name="presetless"))
    try:
        with pytest.warns(PresetWarning, match="no preset shapes-presetless for --method presetless") as caught:
            cfg = base_config("presetless", None, model="shapes")
    finally:
        METHODS.unregister("presetless")
    assert cfg.method == "presetless" and cfg.noise.kind == "random"
    assert "\n" not in str(caught[0].message)
    with pytest.raises(UserError, match="--method must be one of"):
        base_config("nosuchmethod", None, model="shapes")


# -- the toy plugin end to end (child processes) -------------------------------------------------
@pytest.mark.slow
def test_a_plugin_is_offered_by_the_commands_and_a_run_uses_it(tmp_path):
    site = build_toy_plugin(tmp_path / "site")
    env = plugin_env(site)
    train_help = subprocess.run(
        [sys.executable, "-m", "fsd_gs.train", "--help"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert train_help.returncode == 0, train_help.stderr
    assert re.search(r"--method \{[^}]*\bhalfsds\b", train_help.stdout)
    assert re.search(r"--noise\.kind \{[^}]*\bmirrored\b", train_help.stdout)
    export_help = subprocess.run(
        [sys.executable, "-m", "fsd_gs.export", "--help"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert re.search(r"--to \{[^}]*\bxyz\b", export_help.stdout), export_help.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fsd_gs.train",
            "--model",
            "shapes",
            "--prompt",
            "a red mushroom",
            "--method",
            TOY_METHOD,
            "--noise.kind",
            TOY_NOISE,
            "--steps",
            "3",
            *TINY,
            "--output.turntable-views",
            "2",
            "--output.turntable-size",
            "32",
            "--output.formats",
            TOY_FORMAT,
            "--output.no-progress",
            "--output-dir",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "no preset shapes-halfsds" in run.stderr  # the plugin ships no preset: one sentence says so
    (xyz,) = (tmp_path / "out").rglob("model.xyz")
    assert len(xyz.read_text().splitlines()) > 0


@pytest.mark.slow
def test_the_contract_tests_pick_up_a_plugin_without_editing_a_test_file(tmp_path):
    site = build_toy_plugin(tmp_path / "site")
    files = ["tests/test_contract_methods.py", "tests/test_contract_noise.py", "tests/test_contract_export.py"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rA",
            *files,
            "-k",
            f"{TOY_METHOD} or {TOY_NOISE} or {TOY_FORMAT}",
        ],
        capture_output=True,
        text=True,
        env=plugin_env(site),
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    passed = re.findall(r"^PASSED (\S+)", proc.stdout, flags=re.M)
    for name, count in ((TOY_METHOD, 5), (TOY_NOISE, 4), (TOY_FORMAT, 4)):
        assert len([p for p in passed if p.endswith(f"[{name}]")]) == count, (name, passed)
