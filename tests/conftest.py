"""Shared pytest set-up: CPU by default, CUDA tests skipped without a GPU, no network ever; under CI=true or
scripts/test.sh any other skip fails (tests/tool_skips.py)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


from tests.fixtures_pipelines import *  # noqa: E402,F401,F403  (tiny random-weight pipelines, session-scoped)
from tests.tool_skips import pytest_runtest_makereport  # noqa: E402,F401  (CI: a skip for a missing tool fails)
