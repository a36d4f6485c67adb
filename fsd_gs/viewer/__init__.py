"""The browser viewer (viser): live during training, and standalone for any 3DGS .ply.

- :mod:`fsd_gs.viewer.config`: :class:`ViewerConfig` (the ``--viewer.*`` options).
- :mod:`fsd_gs.viewer.app`: the shared viser app (splats, background colour, reset view, count, safe defaults).
- :mod:`fsd_gs.viewer.live`: :class:`LiveViewer` and :class:`TrainingSnapshot`, what the trainer talks to, joining
  :mod:`~fsd_gs.viewer.handover` (trainer-to-viewer hand-over, no viser), :mod:`~fsd_gs.viewer.panels` (the GUI)
  and :mod:`~fsd_gs.viewer.server_render` (server-side renders).
- :mod:`fsd_gs.viewer.standalone`: ``fsd-gs-view PATH.ply`` / ``python -m viewer PATH.ply``.

Only the config is imported here, so that building the CLI does not import viser.
"""

from fsd_gs.viewer.config import ViewerConfig, resolve_mode

__all__ = ["ViewerConfig", "resolve_mode"]
