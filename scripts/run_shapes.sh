#!/usr/bin/env bash
# A fresh machine's first asset, from any folder: sets up the Python environment once (scripts/lib.sh), then trains
# README's offline job with the built-in shapes prior. Extra arguments go to the train command (e.g. --steps 50);
# the run folder is written under ./outputs/ and is the last line printed.
#   bash /path/to/checkout/scripts/run_shapes.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_env
exec "$FSD_GS_VENV/bin/python" -m fsd_gs.train --model shapes --prompt "a red mushroom" "$@"
