"""`python -m viewer PATH.ply`: open a 3D Gaussian Splatting .ply in the browser (see viewer/__init__.py)."""

import sys

from fsd_gs.viewer.standalone import main

if __name__ == "__main__":
    sys.exit(main())
