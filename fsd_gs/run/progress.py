"""The run's progress line as a hook: a tqdm bar on a terminal, else a plain line every 5% (fsd_gs/progress.py).

hooks = [..., ShowProgress()]       # last, so that it shows what the metrics hook logged this step
"""

from __future__ import annotations

from fsd_gs.run.loop import Run, RunHook
from fsd_gs.run.stop import StopRequest
from fsd_gs.step import StepResult


class ShowProgress(RunHook):
    """Updates ``run.progress`` after each step (with ``run.postfix``) and closes it at the end."""

    def after_step(self, run: Run, result: StepResult, stop: StopRequest) -> None:
        run.progress.update(run.stepper.steps_done, run.postfix)

    def at_end(self, run: Run, completed: bool) -> None:
        run.progress.close()
