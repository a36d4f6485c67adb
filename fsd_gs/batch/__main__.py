"""`python -m fsd_gs.batch`: see fsd_gs/batch/cli.py."""

import sys

from fsd_gs.batch.cli import main

sys.exit(main())
