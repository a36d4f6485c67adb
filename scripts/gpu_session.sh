#!/usr/bin/env bash
# What we run on a CUDA machine before calling GPU work done (see BENCHMARKS.md for the figures):
#   1. the CUDA-marked tests (gsplat/reference parity, SD-2.1-size prior in fp16),
#   2. 200 FSD steps at 512x512 through `python -m fsd_gs.train` with a random-weight SD-2.1-base pipeline.
# Usage: bash scripts/gpu_session.sh [WORK_DIR]   (outputs and logs go to WORK_DIR, default /tmp/fsd_gs_gpu)
set -euo pipefail
WORK=${1:-/tmp/fsd_gs_gpu}
mkdir -p "$WORK"
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
[ -d "$WORK/sd21-random" ] || python scripts/make_random_pipeline.py --kind sd21 --out "$WORK/sd21-random"
FSD_GS_SD21_DIR="$WORK/sd21-random" python -m pytest -q -s -m cuda tests 2>&1 | tee "$WORK/pytest_cuda.log" || echo "some CUDA tests FAILED (see above)"
python -m fsd_gs.train --prompt "a DSLR photo of a corgi" --model "$WORK/sd21-random" --steps 200 \
  --output-dir "$WORK/runs" --output.turntable-views 8 2>&1 | tee "$WORK/train200.log"
