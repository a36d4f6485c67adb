"""`python -m fsd_gs.train --prompt "..."`: text in, a 3D Gaussian Splatting asset (.ply) out.

Parse, validate, build, run, exit code; the step is fsd_gs/step.py and the run around it fsd_gs/run/.
Every option is documented by ``--help``. The run folder's path is the last line printed. Exit codes:
0 done, 2 bad input, 1 the loss diverged, 128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)
after saving a checkpoint and the .ply (continue with --resume RUN_DIR).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from fsd_gs.config import TrainConfig, base_config
from fsd_gs.errors import run_cli
from fsd_gs.io.atomic import WriteError
from fsd_gs.run_dir import RunPaths

PROG = "python -m fsd_gs.train"


# -- configuration ---------------------------------------------------------------------------------
@dataclass
class _Defaults:
    """The four options that choose the defaults the other flags apply to (parsed first, by tyro)."""

    config: Optional[str] = None
    method: Optional[str] = None
    model: Optional[str] = None
    resume: Optional[Path] = None


def _defaults_from(argv: Sequence[str]) -> TrainConfig:
    """The defaults the flags apply to: the resumed run's saved config, or method + preset (or the model's preset)."""
    import tyro

    known, _ = tyro.cli(_Defaults, args=list(argv), return_unknown_args=True, add_help=False, console_outputs=False)
    if known.resume is not None:
        from fsd_gs.run import saved_config

        saved, _ = saved_config(RunPaths(known.resume))
        return saved
    base = base_config(known.method, known.config, known.model)
    return dataclasses.replace(base, prompt=tyro.MISSING)  # --prompt is required (shown so in --help)


def parse_config(argv: Sequence[str]) -> TrainConfig:
    """Flags over the defaults of :func:`_defaults_from` (saved config < preset < flags), parsed by tyro."""
    from fsd_gs.cli import tyro_cli

    return tyro_cli(TrainConfig, PROG, argv, default=_defaults_from(argv))


# -- main -----------------------------------------------------------------------------------------
def start_viewer(cfg: TrainConfig, noise_map: Any) -> Any:
    """The live viewer when enabled and interactive (stdout is a terminal), else None."""
    if not cfg.viewer.enabled or not (sys.stdout.isatty() or os.environ.get("FSD_GS_FORCE_VIEWER") == "1"):
        return None
    from fsd_gs.viewer.live import LiveViewer

    try:
        viewer = LiveViewer(cfg.viewer, total_steps=cfg.steps, noise_map=noise_map, noise_kind=cfg.noise.kind)
    except Exception as exc:  # the viewer never stops training
        print(f"warning: the live viewer could not start ({exc}); training without it", file=sys.stderr)
        return None
    print(f"viewer: {viewer.url}")
    return viewer


def print_report(report: dict) -> None:
    mem = report.get("peak_gpu_memory_gb", report.get("peak_rss_gb"))
    mem_name = "peak GPU memory" if "peak_gpu_memory_gb" in report else "peak RSS"
    head = "done" if report["completed"] else f"stopped at {report['steps_done']}/{report['steps']}"
    print(
        f"{head}: {report['steps_done']}/{report['steps']} steps in {report['wall_time_s']:.1f} s "
        f"({report['steps_per_s_this_session']:.2f} steps/s; first step {report['first_step_s']:.1f} s, then "
        f"{report['steps_per_s_after_first_step'] or 0:.2f} steps/s), {report['num_gaussians']} Gaussians, "
        f"{mem_name} {mem:.2f} GB on {report['device']}"
    )
    for name, path in report["outputs"].items():
        print(f"  {name}: {path}")


def check_resources(cfg: TrainConfig, device: Any) -> None:
    """Before any folder exists: the initial Gaussians must fit in memory; too many --threads is one warning."""
    from fsd_gs.gaussians import training_bytes
    from fsd_gs.resources import require_memory, warn_if_oversubscribed

    if cfg.gaussians.init_ply is None:
        require_memory(
            training_bytes(cfg.gaussians.num_points, cfg.gaussians.sh_degree),
            f"{cfg.gaussians.num_points:,} Gaussians",
            device,
            "--gaussians.num-points",
        )
    if device.type == "cpu":
        warn_if_oversubscribed(cfg.threads)


def run(argv: Sequence[str]) -> int:
    from fsd_gs.run import completed_report, load_prior_for, open_run

    cfg = parse_config(argv)
    cfg.validate()
    if cfg.resume is not None and (done := completed_report(cfg, Path(cfg.resume))) is not None:
        return _already_complete(done, cfg)  # before loading the prior: nothing to compute
    prior = load_prior_for(cfg)  # bad model, prompt or size fails here, before any folder exists
    check_resources(cfg, prior.device)
    if prior.compile_decision.enabled or (cfg.prior.compile != "off" and prior.device.type == "cuda"):
        cache = f"; cache {os.environ.get('TORCHINDUCTOR_CACHE_DIR')}" if prior.compile_decision.compiles else ""
        print(f"prior compile: {prior.compile_decision}{cache}")
    with ExitStack() as stack:
        try:
            run_, done = open_run(cfg, Path(cfg.resume) if cfg.resume is not None else None, prior, stack, progress=True)
        except WriteError as exc:
            if not (exc.path.parent / "config.yaml").is_file():
                raise  # no run folder was made: nothing to continue
            return _write_failed(exc, exc.path.parent)
        root = run_.paths.root
        print(f"run folder: {root}")
        if done is not None:
            return _already_complete(done, cfg)
        if run_.stepper.steps_done > 0 or cfg.resume is not None:
            print(f"resumed at step {run_.stepper.steps_done}/{cfg.steps}")
        run_.viewer = start_viewer(cfg, run_.stepper.noise.world_map)
        return _train(run_)


def _already_complete(report: dict, cfg: TrainConfig) -> int:
    """A resume of a finished run: say so (its outputs exist and are not rendered again) and exit 0."""
    root = Path(cfg.resume) if cfg.resume is not None else Path(report["outputs"]["run_dir"])
    print(
        f"the run {root} is already complete ({report['steps_done']}/{cfg.steps} steps, model.ply written); "
        f"nothing to do (pass --steps N with N > {report['steps_done']} to continue it)"
    )
    print(root)
    return 0


def _train(run_: Any) -> int:
    """The loop of an opened run and its outputs (fsd_gs.run.train_runs, as the library's), and the exit code."""
    from fsd_gs.run import StopRequest, train_runs
    from fsd_gs.step import NonFiniteLoss

    root = run_.paths.root
    stop = StopRequest()
    try:
        (report,) = train_runs([run_], stop)
    except WriteError as exc:
        return _write_failed(exc, root)
    except NonFiniteLoss as exc:
        kept = (
            f"the last good checkpoint (step {run_.last_checkpoint.name.split('_')[-1].lstrip('0') or 0}) is kept in "
            f"{run_.last_checkpoint}"
            if run_.last_checkpoint is not None
            else "no checkpoint had been written yet"
        )
        print(f"error: {exc}; stopped. {kept} (try a lower learning rate or guidance scale)", file=sys.stderr)
        print(root)
        return 1
    finally:
        if run_.viewer is not None:  # closed already when the run finished (the viewer hook's at_end)
            run_.viewer.close()
    completed = report["completed"]
    print_report(report)
    if not completed:
        print(
            f"stopped at step {run_.stepper.steps_done}/{run_.cfg.steps}: checkpoint and model.ply saved; "
            f"continue with --resume {root}",
            file=sys.stderr,
        )
    print(root)
    return 0 if completed else stop.exit_code


def _write_failed(exc: WriteError, root: Path) -> int:
    """A write of the run failed (no space, no permission): one sentence; the last checkpoint keeps it resumable."""
    print(
        f"error: {exc}; the run is kept as of its last checkpoint: continue it with --resume {root} once that is fixed",
        file=sys.stderr,
    )
    print(root)
    return exc.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: UserError -> one line on stderr and exit code 2."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
