"""The contract every registered export format keeps (fsd_gs/export/): one test per entry, plugins included.

The file is named by the format's suffix, written atomically (no temporary file left) and byte-for-byte the
same for the same Gaussians; non-finite rows are dropped once with one warning (the file equals that of the
finite rows); an existing file is refused without --overwrite; ``python -m fsd_gs.export --help`` lists it.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from fsd_gs.errors import UserError
from fsd_gs.export import EXPORT_FORMATS, MeshConfig, NonFiniteWarning, export_gaussians
from fsd_gs.export.__main__ import main
from fsd_gs.finite import subset
from tests.contract import help_choices
from tests.test_export import random_gaussians

NAMES = list(EXPORT_FORMATS)
MESH = MeshConfig(resolution=32)
"""A coarse grid keeps the mesh format fast; the other formats ignore it."""


def sphere_of_gaussians(n: int = 300, seed: int = 0):
    """Random Gaussians (tests/test_export.py), all visible so every format has something to write."""
    g = random_gaussians(n, 1, seed)
    with torch.no_grad():
        g.params["opacities"][:] = 3.0
        g.params["scales"][:] = -2.5
    return g


@pytest.mark.parametrize("name", NAMES)
def test_the_file_is_named_by_its_suffix_atomic_and_deterministic(name, tmp_path):
    g = sphere_of_gaussians()
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)  # finite input: no warning
        (path,) = export_gaussians(g, first, [name], mesh=MESH).values()
    assert path == first / f"model{EXPORT_FORMATS[name].file_suffix(MESH)}"
    assert sorted(p.name for p in first.iterdir()) == [path.name]  # no temporary file left behind
    assert path.stat().st_size > 0
    (again,) = export_gaussians(g, second, [name], mesh=MESH).values()
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_rows_are_dropped_once_with_one_warning(name, tmp_path):
    g = sphere_of_gaussians()
    finite = subset(g, torch.arange(len(g)) >= 2)
    with torch.no_grad():
        g.params["means"][0, 1] = float("nan")
        g.params["scales"][1, 0] = float("inf")
    (tmp_path / "bad").mkdir()
    (tmp_path / "good").mkdir()
    with pytest.warns(NonFiniteWarning) as caught:
        (bad,) = export_gaussians(g, tmp_path / "bad", [name], mesh=MESH).values()
    assert len([w for w in caught if issubclass(w.category, NonFiniteWarning)]) == 1
    (good,) = export_gaussians(finite, tmp_path / "good", [name], mesh=MESH).values()
    assert bad.read_bytes() == good.read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_an_existing_file_is_refused_without_overwrite(name, tmp_path):
    g = sphere_of_gaussians()
    (path,) = export_gaussians(g, tmp_path, [name], mesh=MESH).values()
    before = path.read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        export_gaussians(sphere_of_gaussians(seed=1), tmp_path, [name], mesh=MESH)
    assert path.read_bytes() == before
    export_gaussians(sphere_of_gaussians(seed=1), tmp_path, [name], mesh=MESH, overwrite=True)
    assert path.read_bytes() != before


@pytest.mark.parametrize("name", NAMES)
def test_help_lists_the_format(name):
    assert name in help_choices(main, "--to")
