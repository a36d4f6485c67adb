"""The run's side jobs are hooks (fsd_gs/run/loop.py): each is called at its named points, and a run without a hook
has none of its artefacts."""

from __future__ import annotations

import dataclasses
import json
import signal
from contextlib import ExitStack

import pytest

from fsd_gs.run import Run, RunHook, ShowProgress, StopRequest, default_hooks, open_run, train_runs
from fsd_gs.step import StepResult


@pytest.fixture(scope="module")
def shapes_prior():
    from fsd_gs.prior.factory import load_prior

    return load_prior("shapes", device="cpu")


def small_cfg(steps: int = 4):
    from tests.test_step import tiny_cfg

    cfg = tiny_cfg()
    output = dataclasses.replace(cfg.output, checkpoint_every=2, log_every=1, snapshot_every=0, turntable_views=2)
    return dataclasses.replace(cfg, steps=steps, output=output)


class Recorder(RunHook):
    """Writes down every call, with the step counter at that moment."""

    def __init__(self, stop_at: int = 0) -> None:
        self.events: list[tuple] = []
        self.stop_at = stop_at

    def after_step(self, run: Run, result: StepResult, stop: StopRequest) -> None:
        self.events.append(("after_step", run.stepper.steps_done))
        if run.stepper.steps_done == self.stop_at:
            stop.signum = signal.SIGTERM  # as the handler does when the signal arrives

    def at_checkpoint(self, run: Run, folder) -> None:
        self.events.append(("at_checkpoint", int(folder.name.split("_")[-1])))

    def at_end(self, run: Run, completed: bool) -> None:
        self.events.append(("at_end", completed))

    def on_stop(self, run: Run, signum: int) -> None:
        self.events.append(("on_stop", signum))


def test_a_hook_is_called_at_every_named_point_in_order(shapes_prior, tmp_path):
    recorder = Recorder()
    with ExitStack() as stack:
        run, done = open_run(small_cfg(), tmp_path / "run", shapes_prior, stack, hooks=[*default_hooks(), recorder])
        assert done is None
        (report,) = train_runs([run], StopRequest())
    assert report["completed"] and report["steps_done"] == 4
    assert recorder.events == [
        ("after_step", 1),
        ("at_checkpoint", 2),  # the Checkpointer hook runs before the recorder's after_step, in the list's order
        ("after_step", 2),
        ("after_step", 3),
        ("at_checkpoint", 4),
        ("after_step", 4),
        ("at_end", True),
        ("at_checkpoint", 4),  # the final checkpoint of finish()
    ]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]


def test_a_stop_calls_on_stop_and_the_run_is_saved_incomplete(shapes_prior, tmp_path):
    recorder = Recorder(stop_at=3)
    with ExitStack() as stack:
        run, _ = open_run(small_cfg(), tmp_path / "run", shapes_prior, stack, hooks=[*default_hooks(), recorder])
        (report,) = train_runs([run], StopRequest())
    assert not report["completed"] and report["steps_done"] == 3
    assert recorder.events[-3:] == [("on_stop", signal.SIGTERM), ("at_end", False), ("at_checkpoint", 3)]
    assert (tmp_path / "run" / "model.ply").is_file() and (tmp_path / "run" / ".lock").exists()  # resumable


def test_a_run_without_the_metrics_and_checkpoint_hooks_writes_neither(shapes_prior, tmp_path):
    with ExitStack() as stack:
        run, _ = open_run(small_cfg(), tmp_path / "run", shapes_prior, stack, hooks=[ShowProgress()])
        (report,) = train_runs([run], StopRequest())
    root = tmp_path / "run"
    assert report["completed"] and not (root / "metrics.jsonl").exists()
    assert [p.name for p in (root / "checkpoints").iterdir()] == ["step_000004"]  # only finish()'s own checkpoint


class FakeViewer:
    """What ViewerFeed uses of the live viewer: update, pop_save_request, paused, close."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.paused = False
        self.closed_at: int | None = None
        self.save_requests = 1

    def update(self, snapshot) -> None:
        self.steps.append(snapshot.step)

    def pop_save_request(self) -> bool:
        asked, self.save_requests = self.save_requests > 0, 0
        return asked

    def close(self) -> None:
        self.closed_at = len(self.steps)


def test_the_viewer_feed_gets_every_step_saves_on_request_and_closes_before_the_outputs(shapes_prior, tmp_path):
    viewer = FakeViewer()
    with ExitStack() as stack:
        run, _ = open_run(small_cfg(3), tmp_path / "run", shapes_prior, stack)
        run.viewer = viewer
        (report,) = train_runs([run], StopRequest())
    assert report["completed"] and viewer.steps == [1, 2, 3] and viewer.closed_at == 3
    assert (tmp_path / "run" / "saved_step_000001.ply").is_file()
