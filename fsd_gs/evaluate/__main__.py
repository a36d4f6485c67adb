"""`python -m fsd_gs.evaluate PATH [PATH ...]`: quality, IS, CROSS-FID and 3D consistency (view accuracy, Janus
rate) per prompt and method, the paper's table and a gallery. The output folder is the last line printed.
Exit codes: 0 done, 2 bad input."""

from __future__ import annotations

import sys
from typing import Sequence

from fsd_gs.cli import tyro_cli
from fsd_gs.errors import run_cli
from fsd_gs.evaluate.evaluation import EvaluateConfig


def parse_config(argv: Sequence[str]) -> EvaluateConfig:

    return tyro_cli(EvaluateConfig, "python -m fsd_gs.evaluate", list(argv))


def run(argv: Sequence[str]) -> int:
    from fsd_gs.evaluate.evaluation import evaluate

    cfg = parse_config(argv)
    result = evaluate(cfg)
    table = (result.folder / "evaluation.md").read_text().split("\n## Per prompt")[0]
    print(table.rstrip())
    if result.missing:
        print(f"{len(result.missing)} run(s) missing or incomplete: listed in evaluation.md")
    print(result.folder)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: UserError -> one line on stderr and exit code 2."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
