"""A toy third-party plugin for the registries, and :func:`build_toy_plugin`, which "installs" it into a folder.

The plugin (tests/plugins/toy_fsd_plugin/, the worked example of docs/extending.md) adds one method
(``halfsds``), one noise kind (``mirrored``) and one export format (``xyz``) through the entry point groups
``fsd_gs.methods``, ``fsd_gs.noise`` and ``fsd_gs.export``. :func:`build_toy_plugin` copies it into a folder
next to a ``.dist-info`` holding its entry points, so putting that folder on sys.path (or PYTHONPATH) is
all it takes for ``importlib.metadata`` to find it: no pip install.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOY_METHOD, TOY_NOISE, TOY_FORMAT = "halfsds", "mirrored", "xyz"

ENTRY_POINTS = f"""[fsd_gs.methods]
{TOY_METHOD} = toy_fsd_plugin.methods:HALF_SDS

[fsd_gs.noise]
{TOY_NOISE} = toy_fsd_plugin.noise:MIRRORED

[fsd_gs.export]
{TOY_FORMAT} = toy_fsd_plugin.export:XYZ
"""


def build_toy_plugin(site: Path) -> Path:
    """Write the toy plugin and its dist-info into ``site`` (created); returns ``site`` (put it on sys.path)."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        Path(__file__).parent / "toy_fsd_plugin", site / "toy_fsd_plugin", ignore=shutil.ignore_patterns("__pycache__")
    )
    info = site / "toy_fsd_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-fsd-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (info / "top_level.txt").write_text("toy_fsd_plugin\n")
    return site
