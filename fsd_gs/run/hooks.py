"""The run's built-in side jobs, as hooks (fsd_gs/run/loop.py calls them at named points).

    hooks = [MetricsLog(), ViewerFeed(), Checkpointer(), Snapshots(), ShowProgress()]   # the default order

MetricsLog averages the loss and appends to metrics.jsonl every --output.log-every steps (and refuses a
non-finite loss); ViewerFeed hands each step to the live viewer (when the run has one) and waits while it is
paused; Checkpointer commits a checkpoint every --output.checkpoint-every steps; Snapshots writes a .ply every
--output.snapshot-every steps. ShowProgress (fsd_gs/run/progress.py) draws the progress line.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Optional

import torch

from fsd_gs.io.atomic import append_text, writing
from fsd_gs.io.ply import write_ply
from fsd_gs.run.loop import Run, RunHook
from fsd_gs.run.stop import StopRequest
from fsd_gs.step import NonFiniteLoss, StepResult


class MetricsLog(RunHook):
    """metrics.jsonl: the mean loss since the last line, t, Gaussians, speed, lr and wall time; NaN stops the run."""

    def __init__(self) -> None:
        self.loss_sum: Optional[torch.Tensor] = None
        """Sum of the losses since the last line (a scalar on the device: no host sync per step)."""
        self.loss_count = 0

    def after_step(self, run: Run, result: StepResult, stop: StopRequest) -> None:
        step = run.stepper.steps_done
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), device=run.stepper.device)
        self.loss_sum += result.loss
        self.loss_count += 1
        if run.stepper.device.type == "cpu" and not torch.isfinite(result.loss):
            raise NonFiniteLoss(f"the loss became {result.loss.item()} at step {step}")
        if step % run.cfg.output.log_every == 0 or step == run.cfg.steps:
            run.postfix = self._log(run, result, self.loss_sum)

    def _log(self, run: Run, result: StepResult, loss_sum: torch.Tensor) -> dict[str, Any]:
        loss = (loss_sum / max(1, self.loss_count)).item()
        loss_sum.zero_()
        self.loss_count = 0
        stepper = run.stepper
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"the loss became {loss} near step {stepper.steps_done}")
        t = int(result.timestep[0])
        record = {
            "step": stepper.steps_done,
            "loss": loss,
            "t": t,
            "num_gaussians": len(stepper.gaussians),
            "it_per_s": run.progress.rate,
            "lr_means": stepper.optimizers["means"].param_groups[0]["lr"],
            "wall_time": run.stats.wall,
        }
        append_text(run.paths.metrics, json.dumps(record) + "\n")
        return {"loss": f"{loss:.4g}", "t": t, "n": len(stepper.gaussians)}


class Checkpointer(RunHook):
    """A checkpoint every --output.checkpoint-every steps (0: only the one at the end)."""

    def after_step(self, run: Run, result: StepResult, stop: StopRequest) -> None:
        every = run.cfg.output.checkpoint_every
        if every and run.stepper.steps_done % every == 0:
            run.save_checkpoint()


class Snapshots(RunHook):
    """``snapshots/step_NNNNNN.ply`` every --output.snapshot-every steps (0: none)."""

    def after_step(self, run: Run, result: StepResult, stop: StopRequest) -> None:
        every, step = run.cfg.output.snapshot_every, run.stepper.steps_done
        if every and step % every == 0:
            with writing(run.paths.snapshots):
                run.paths.snapshots.mkdir(exist_ok=True)
            write_ply(run.stepper.gaussians, run.paths.snapshots / f"step_{step:06d}.ply")


class ViewerFeed(RunHook):
    """Hands every step to ``run.viewer`` (none: nothing), saves a .ply on request, waits while paused; closes it at the end."""

    def after_step(self, run: Run, result: StepResult, stop: StopRequest) -> None:
        if run.viewer is None:
            return
        from fsd_gs.viewer.live import TrainingSnapshot

        stepper, rate = run.stepper, run.progress.rate
        eta = (run.cfg.steps - stepper.steps_done) / rate if rate else float("nan")
        cams = result.cameras
        origin = stepper.noise.window_origin(float(cams.azimuth[0]), float(cams.elevation[0]))
        run.viewer.update(
            TrainingSnapshot(
                step=stepper.steps_done,
                total_steps=run.cfg.steps,
                loss=result.loss,
                timestep=result.timestep[0],
                num_gaussians=len(stepper.gaussians),
                it_per_s=rate,
                eta_s=eta,
                gaussians=stepper.gaussians,
                train_rgb=result.rgb[0],
                noise_window=result.eps[0],
                window_origin=origin,
                window_size=(int(result.eps.shape[-2]), int(result.eps.shape[-1])),
            )
        )
        while True:
            if run.viewer.pop_save_request():  # also while paused: "save .ply now" must not wait for Resume
                write_ply(stepper.gaussians, run.paths.root / f"saved_step_{stepper.steps_done:06d}.ply")
            if not run.viewer.paused or stop.signum is not None:
                break
            time.sleep(0.05)

    def at_end(self, run: Run, completed: bool) -> None:
        if run.viewer is not None:  # closed before the final outputs are rendered
            run.viewer.close()
