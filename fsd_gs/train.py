"""`python -m fsd_gs.train --prompt "..."`: text in, a 3D Gaussian Splatting asset (.ply) out.

Every option is documented by ``--help`` (generated from fsd_gs/config.py). The run folder's path is
the last line printed. Exit codes: 0 done, 2 bad input, 1 the loss diverged, 130 stopped by Ctrl-C
(after saving a checkpoint and the .ply; continue with --resume RUN_DIR).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from fsd_gs import __version__
from fsd_gs.config import TrainConfig, base_config, from_dict, to_dict
from fsd_gs.errors import UserError, run_cli
from fsd_gs.run_dir import RunPaths, create_run_dir

CPU_PARAM_LIMIT = 100_000_000
"""A prior whose networks have more parameters than this takes seconds per step on a CPU."""


# -- configuration ---------------------------------------------------------------------------------
def _flag_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def parse_config(argv: Sequence[str]) -> TrainConfig:
    """Defaults < --method defaults < --config preset < flags; --help prints every option."""
    import tyro

    preset = _flag_value(argv, "--config")
    method = _flag_value(argv, "--method")
    if method is not None and method not in ("fsd", "sds"):
        raise UserError(f"--method must be fsd or sds, got {method!r}")
    base = base_config(method, Path(preset) if preset else None)
    return tyro.cli(TrainConfig, default=base, args=list(argv), description=TrainConfig.__doc__)


def explicit_fields(argv: Sequence[str]) -> list[str]:
    """Dotted config paths of the flags given on the command line ("--camera.batch-size 2" -> "camera.batch_size";
    "--output.no-progress" -> "output.progress")."""
    paths = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            parts = arg[2:].split("=", 1)[0].replace("-", "_").split(".")
            if parts[-1].startswith("no_"):
                paths.append(".".join([*parts[:-1], parts[-1][3:]]))
            paths.append(".".join(parts))
    return paths


def _copy_field(dst: Any, src: Any, path: list[str]) -> Any:
    """``dst`` with the field at ``path`` taken from ``src`` (dataclasses; unknown paths leave it unchanged)."""
    if not path or not dataclasses.is_dataclass(dst) or path[0] not in {f.name for f in dataclasses.fields(dst)}:
        return dst
    head = path[0]
    value = getattr(src, head) if len(path) == 1 else _copy_field(getattr(dst, head), getattr(src, head), path[1:])
    return dataclasses.replace(dst, **{head: value})


def prepare_resume(cli: TrainConfig, argv: Sequence[str]) -> tuple[TrainConfig, RunPaths]:
    """The saved config of the run in --resume, with the flags given on this command line applied on top."""
    from fsd_gs.io.checkpoint import has_checkpoint

    run_dir = Path(cli.resume)
    paths = RunPaths(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml): pass the folder a run printed last")
    if not has_checkpoint(paths.checkpoint):
        raise UserError(f"{run_dir} has no checkpoint to resume from: start a new run instead")
    cfg = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    for path in explicit_fields(argv):
        cfg = _copy_field(cfg, cli, path.split("."))
    cfg = dataclasses.replace(cfg, resume=run_dir)
    cfg.validate()
    return cfg, paths


# -- helpers ---------------------------------------------------------------------------------------
def check_cpu_speed(prior: Any, cfg: TrainConfig, device: torch.device) -> None:
    """Refuse a large model on a CPU (seconds per step) unless --guidance.allow-slow-cpu."""
    if device.type != "cpu" or cfg.guidance.allow_slow_cpu:
        return
    networks = [getattr(prior, name, None) for name in ("unet", "vae", "text_encoder")]
    n_params = sum(p.numel() for net in networks if isinstance(net, torch.nn.Module) for p in net.parameters())
    if n_params > CPU_PARAM_LIMIT:
        raise UserError(
            f"{cfg.model} has {n_params / 1e6:.0f}M parameters and would take seconds per step on this CPU: "
            "use --model shapes (the built-in CPU prior), a CUDA GPU, or --guidance.allow-slow-cpu to run anyway"
        )


def peak_memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_gb": rss_kb / 2**20}


def write_report(paths: RunPaths, trainer: Any, cfg: TrainConfig, completed: bool, outputs: dict[str, str]) -> dict:
    stats = trainer.stats
    session_s = stats.wall - stats.wall_before
    after_first = session_s - (stats.first_step_s or 0.0) if stats.steps_this_session > 1 else 0.0
    report = {
        "prompt": cfg.prompt, "method": cfg.method, "model": cfg.model, "seed": cfg.seed,
        "steps": cfg.steps, "steps_done": trainer.step, "completed": completed,
        "wall_time_s": round(stats.wall, 3),
        "steps_per_s_this_session": round(stats.steps_this_session / max(1e-9, session_s), 3),
        "first_step_s": round(stats.first_step_s or 0.0, 3),
        "steps_per_s_after_first_step": round((stats.steps_this_session - 1) / after_first, 3) if after_first else None,
        "num_gaussians": len(trainer.gaussians),
        "densify_counts": stats.densify_counts,
        "device": str(trainer.device) + (f" ({torch.cuda.get_device_name(trainer.device)})"
                                         if trainer.device.type == "cuda" else f" ({platform.processor() or 'cpu'})"),
        **{k: round(v, 3) for k, v in peak_memory(trainer.device).items()},
        "versions": {"fsd_gs": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "outputs": outputs,
    }
    paths.report.write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_report(report: dict) -> None:
    mem = report.get("peak_gpu_memory_gb", report.get("peak_rss_gb"))
    mem_name = "peak GPU memory" if "peak_gpu_memory_gb" in report else "peak RSS"
    print(f"done: {report['steps_done']}/{report['steps']} steps in {report['wall_time_s']:.1f} s "
          f"({report['steps_per_s_this_session']:.2f} steps/s; first step {report['first_step_s']:.1f} s, then "
          f"{report['steps_per_s_after_first_step'] or 0:.2f} steps/s), {report['num_gaussians']} Gaussians, "
          f"{mem_name} {mem:.2f} GB on {report['device']}")
    for name, path in report["outputs"].items():
        print(f"  {name}: {path}")


def start_viewer(cfg: TrainConfig, trainer: Any) -> Any:
    """The live viewer when enabled and interactive (stdout is a terminal), else None."""
    if not cfg.viewer.enabled or not (sys.stdout.isatty() or os.environ.get("FSD_GS_FORCE_VIEWER") == "1"):
        return None
    from fsd_gs.viewer.live import LiveViewer

    noise_map = getattr(trainer.noise, "world_map", None)
    try:
        viewer = LiveViewer(cfg.viewer, total_steps=cfg.steps, noise_map=noise_map)
    except Exception as exc:  # the viewer never stops training
        print(f"warning: the live viewer could not start ({exc}); training without it", file=sys.stderr)
        return None
    print(f"viewer: {viewer.url}")
    return viewer


# -- main -----------------------------------------------------------------------------------------
def run(argv: Sequence[str]) -> int:
    from fsd_gs.device import resolve_device
    from fsd_gs.io.ply import write_ply
    from fsd_gs.prior.factory import load_prior, prior_config_from
    from fsd_gs.trainer import NonFiniteLoss, Trainer
    from fsd_gs.turntable import render_turntable, save_turntable

    cfg = parse_config(argv)
    if cfg.resume is not None:
        cfg, paths = prepare_resume(cfg, argv)
    else:
        cfg.validate()
        paths = None
    # Everything that can fail on bad input happens before the run folder exists: a failed start leaves nothing.
    device = resolve_device(cfg.device)
    prior = load_prior(prior_config_from(cfg), device)
    check_cpu_speed(prior, cfg, device)
    trainer = Trainer(cfg, prior)
    if paths is None:
        paths = create_run_dir(cfg.output_dir, cfg.prompt, cfg.seed)
        paths.config.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    trainer.paths = paths
    print(f"run folder: {paths.root}")
    if cfg.resume is not None:
        trainer.restore(paths.checkpoint)
        if trainer.step >= cfg.steps:
            print(f"the run is already complete ({trainer.step}/{cfg.steps} steps); nothing to do "
                  f"(pass --steps N with N > {trainer.step} to continue it)")
            print(paths.root)
            return 0
        print(f"resumed at step {trainer.step}/{cfg.steps}")
    viewer = start_viewer(cfg, trainer)
    completed, code = False, 0
    try:
        completed = trainer.run(viewer)
    except NonFiniteLoss as exc:
        print(f"error: {exc}; stopped. The last good checkpoint is kept in {paths.checkpoint} "
              "(try a lower learning rate or guidance scale)", file=sys.stderr)
        print(paths.root)
        return 1
    finally:
        if viewer is not None:
            viewer.close()
    trainer.save_checkpoint()
    write_ply(trainer.gaussians, paths.model_ply)
    outputs = {"run_dir": str(paths.root), "model_ply": str(paths.model_ply), "config": str(paths.config),
               "metrics": str(paths.metrics), "checkpoint": str(paths.checkpoint)}
    if completed:
        frames = render_turntable(trainer.gaussians, cfg.camera, cfg.output.turntable_views,
                                  cfg.output.turntable_size, cfg.render)
        for path in save_turntable(frames, paths.turntable_png, paths.turntable_mp4):
            outputs[f"turntable_{path.suffix[1:]}"] = str(path)
    else:
        code = 130
        print(f"interrupted at step {trainer.step}: checkpoint and model.ply saved; continue with "
              f"--resume {paths.root}", file=sys.stderr)
    outputs["report"] = str(paths.report)
    report = write_report(paths, trainer, cfg, completed, outputs)
    print_report(report)
    print(paths.root)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: UserError -> one line on stderr and exit code 2."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
