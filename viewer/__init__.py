"""Standalone viewer for any 3D Gaussian Splatting .ply (ours or another tool's, INRIA layout, SH degree 0-3).

    python -m viewer PATH.ply [--host 127.0.0.1] [--port 8080] [--background 1 1 1] [--up +z]
    python viewer/view_ply.py PATH.ply ...
    fsd-gs-view PATH.ply ...                      (the installed console script)

All three run :func:`fsd_gs.viewer.standalone.main`; ``--help`` lists every option.
"""
