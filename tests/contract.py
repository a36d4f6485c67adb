"""Shared pieces of the contract tests (tests/test_contract_*.py) and of other tests: a tiny shapes-prior run, a
multi-view train command end to end, a script imported as a module, and --help choices.

The contract tests are parametrised over the registries at collection time, so every registered entry,
built-in or plugged in through an entry point, is tested without a test file naming it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import pytest
import torch

from fsd_gs.step import DistillStep
from fsd_gs.train import parse_config

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
"""The checkout's scripts/ folder (:func:`load_script`)."""

TINY = ["--camera.width", "32", "--camera.height", "32", "--gaussians.num-points", "200"]
"""The size flags of a tiny run: 32 x 32 renders of 200 Gaussians (tiny_cfg, tests/test_batch.py, tests/test_registry.py)."""


def tiny_cfg(seed: int = 0, *extra: str):
    """A 32 x 32, 200-Gaussian run on the built-in shapes prior (the config tests/test_step.py steps)."""
    return parse_config(
        [
            "--model",
            "shapes",
            "--prompt",
            "a red mushroom",
            "--seed",
            str(seed),
            "--steps",
            "10",
            *TINY,
            "--densify.refine-start-iter",
            "2",
            "--densify.refine-every",
            "3",
            *extra,
        ]
    )


def tiny_step(prior, *extra: str, seed: int = 0) -> DistillStep:
    """A :class:`DistillStep` of :func:`tiny_cfg` on ``prior`` (CPU)."""
    return DistillStep(tiny_cfg(seed, *extra), prior, torch.device("cpu"))


def together_and_alone(prior, cfgs: list, monkeypatch) -> tuple[list[DistillStep], list[DistillStep], dict]:
    """Two :class:`DistillStep` lists of ``cfgs`` on ``prior`` (CPU), to step with ``step_together`` and one by one,
    and the dict that collects each step's gradients just before Adam: (mode, seed) -> {parameter: grad}, mode
    "together" or "alone" (``fsd_gs.step.optimizer_step``, which both paths call, is spied on through ``monkeypatch``)."""
    import fsd_gs.step

    grads: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    original = fsd_gs.step.optimizer_step

    def spy(steps):
        for step in steps:
            grads[(step._mode, step.cfg.seed)] = {k: v.grad.clone() for k, v in step.gaussians.params.items()}
        return original(steps)

    monkeypatch.setattr(fsd_gs.step, "optimizer_step", spy)
    together = [DistillStep(c, prior, torch.device("cpu")) for c in cfgs]
    alone = [DistillStep(c, prior, torch.device("cpu")) for c in cfgs]
    for s in together:
        s._mode = "together"
    for s in alone:
        s._mode = "alone"
    return together, alone, grads


def train_multiview(preset: str, model: str, prompt: str, steps: int, out: Path, capsys, *extra: str, bad_batch: int) -> None:
    """``python -m fsd_gs.train --config preset --model model`` for ``steps`` steps (tiny turntable, no viewer) writes
    a non-empty model.ply under ``out``; the same command with ``--camera.batch-size bad_batch`` (not a multiple of the
    4 views of a group) is refused with exit code 2 and says why."""
    from fsd_gs.io.ply import read_ply
    from fsd_gs.train import main

    args = [
        "--config",
        preset,
        "--model",
        model,
        "--prompt",
        prompt,
        "--steps",
        str(steps),
        *extra,
        "--output-dir",
        str(out),
        "--output.turntable-views",
        "2",
        "--output.turntable-size",
        "32",
        "--viewer.no-enabled",
        "--output.no-progress",
    ]
    assert main(args) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(read_ply(run / "model.ply")) > 0
    assert main([*args, "--camera.batch-size", str(bad_batch)]) == 2
    assert "multiple of 4" in capsys.readouterr().err


def load_script(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """scripts/<name>.py imported as the module ``name`` (registered in sys.modules for the test: the scripts'
    dataclasses look their module up there), so a test calls its functions and ``main`` in process."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def help_choices(main: Callable[[Sequence[str]], object], flag: str) -> list[str]:
    """The ``{a,b,c}`` choices that ``main(["--help"])`` lists for ``flag`` (wide terminal, so nothing wraps)."""
    out = io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "1000"
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            main(["--help"])
    finally:
        if columns is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = columns
    match = re.search(re.escape(flag) + r" \{([^}]*)\}", out.getvalue())
    assert match, f"--help lists no choices for {flag}"
    return match.group(1).split(",")
