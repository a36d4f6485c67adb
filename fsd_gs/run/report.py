"""A run's end: its final checkpoint, model.ply, turntable, exports and report.json.

    report = finish(run, completed)     # after run_loop; the hooks' at_end first (viewer, progress)

report.json says what ran, how fast, on what, and where everything is; a complete run drops its .lock.
"""

from __future__ import annotations

import json

import torch

from fsd_gs import __version__
from fsd_gs.io.atomic import atomic_write_text
from fsd_gs.io.ply import write_ply
from fsd_gs.run.loop import Run


def finish(run: Run, completed: bool) -> dict:
    """Checkpoint, model.ply, turntable and exports (when complete) and report.json; returns the report."""
    run.end(completed)
    run.save_checkpoint()
    write_ply(run.stepper.gaussians, run.paths.model_ply)
    paths = run.paths
    outputs = {
        "run_dir": str(paths.root),
        "model_ply": str(paths.model_ply),
        "config": str(paths.config),
        "metrics": str(paths.metrics),
        "checkpoint": str(run.last_checkpoint),
    }
    if completed:
        outputs.update(_final_outputs(run))
    outputs["report"] = str(paths.report)
    report = write_report(run, completed, outputs)
    if completed and run.lock is not None:
        run.lock.remove = True  # a finished run keeps no .lock (deleted by its owner on release)
    return report


def _final_outputs(run: Run) -> dict[str, str]:
    """The turntable (png, mp4) and the --output.formats exports of a complete run: name -> path."""
    from fsd_gs.turntable import render_turntable, save_turntable

    cfg, gaussians, root = run.cfg, run.stepper.gaussians, run.paths.root
    frames = render_turntable(gaussians, cfg.camera, cfg.output.turntable_views, cfg.output.turntable_size, cfg.render)
    outputs = {
        f"turntable_{path.suffix[1:]}": str(path)
        for path in save_turntable(frames, run.paths.turntable_png, run.paths.turntable_mp4)
    }
    if cfg.output.formats:
        from fsd_gs.export import export_gaussians

        exported = export_gaussians(gaussians, root, cfg.output.formats, overwrite=True)
        outputs.update({f"export_{name}": str(path) for name, path in exported.items()})
    return outputs


def write_report(run: Run, completed: bool, outputs: dict[str, str]) -> dict:
    """report.json (atomically): what ran, how fast, on what, and where everything is."""
    cfg, stats, device = run.cfg, run.stats, run.stepper.device
    session_s = stats.wall - stats.wall_before
    after_first = session_s - (stats.first_step_s or 0.0) if stats.steps_this_session > 1 else 0.0
    if device.type == "cuda":
        memory = {
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "peak_gpu_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 2**30, 3),
        }
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        import platform
        import resource

        memory = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
        name = f"{device} ({platform.processor() or 'cpu'}, {cfg.threads or torch.get_num_threads()} threads)"
    report = {
        "prompt": cfg.prompt,
        "method": cfg.method,
        "model": cfg.model,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "steps_done": run.stepper.steps_done,
        "completed": completed,
        "wall_time_s": round(stats.wall, 3),
        "steps_per_s_this_session": round(stats.steps_this_session / max(1e-9, session_s), 3),
        "first_step_s": round(stats.first_step_s or 0.0, 3),
        "steps_per_s_after_first_step": round((stats.steps_this_session - 1) / after_first, 3) if after_first else None,
        "num_gaussians": len(run.stepper.gaussians),
        "densify_counts": run.stepper.densify_counts,
        "device": name,
        **memory,
        "prior_load_s": round(run.stepper.prior.load_seconds, 3),
        "compile": str(run.stepper.prior.compile_decision),
        "versions": {"fsd_gs": __version__, "torch": torch.__version__},
        "outputs": outputs,
    }
    atomic_write_text(run.paths.report, json.dumps(report, indent=2) + "\n")
    return report
