"""Where work units run: in this process (``LocalEngine``) or on long-lived Ray actors (``RayEngine``).

Both have the same small interface, which the driver (fsd_gs/batch/driver.py) schedules on:
``idle_slots()``, ``submit(key, tasks)``, ``busy()``, ``next_outcomes()`` -> finished :class:`Outcome`\\ s,
``stop_running(grace_s)`` -> the outcomes of the running units, asked to stop and save (a stop signal),
``close()``; ``device`` is what every asset's ``--device auto`` is recorded as (cpu or cuda). A worker that
dies mid-unit (killed, out of memory, node lost) comes back as an Outcome with ``lost`` set and no results;
the Ray engine replaces the dead actor, and the driver resubmits the unit.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from fsd_gs.batch.worker import CRASH_ENV, AssetWorker, Task
from fsd_gs.errors import UserError, require

NO_NATIVE_DUMPS = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"
"""Ray's native failure handler prints a stack dump on SIGTERM; the batch sets this to 1 (unless it is set) in the
driver before starting Ray and in its workers, since it handles stop signals itself."""


@dataclass
class Outcome:
    """A finished submission: the unit's key, and either its per-item results or why its worker was lost."""

    key: str
    results: Optional[list[dict[str, Any]]]
    lost: Optional[str] = None
    worker: str = ""


@dataclass
class RaySettings:
    """How the Ray engine starts (or joins) Ray and how big its workers are."""

    address: Optional[str] = None
    """Join this running cluster ("auto" or "HOST:PORT"); None starts a private local Ray for this command."""
    workers: Optional[int] = None
    """Actors to start; None = number of GPUs / gpus_per_worker on GPUs, number of CPUs / cpus_per_worker on CPUs."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per actor, also its OMP_NUM_THREADS and torch thread count outside the step (the step itself
    uses the train option --threads, default 1)."""
    gpus_per_worker: Optional[float] = None
    """GPUs per actor: 1 = one actor per GPU; a fraction shares a GPU between actors (small priors such as
    shapes: 0.25); 0 = CPU actors; None = 1 when the cluster has GPUs (:data:`SMALL_PRIOR_GPUS_PER_WORKER` with
    ``small_priors``), else 0."""
    small_priors: bool = False
    """Every unit's prior is a small built-in one (the shapes world), so by default several actors share a GPU."""
    prior_cache: int = 1
    """Priors each actor keeps loaded at once (least recently used is dropped)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the actors."""


SMALL_PRIOR_GPUS_PER_WORKER = 0.25
"""Default GPUs per actor when every prior is a built-in shapes-world one: four actors share a GPU. Such a step is
host-bound (Python and kernel launches), so actors side by side fill the GPU: on one H100 (2026-12-06, BENCHMARKS.md
round 3, ninth session) 32 shapes-fsd assets took 65.9 s with 2 actors and 50.3 s with 4 busy ones."""


def worker_layout(n_cpu: float, n_gpu: float, settings: RaySettings) -> tuple[int, float]:
    """(actors, GPUs per actor) for a cluster of ``n_cpu`` CPUs and ``n_gpu`` GPUs: one actor per GPU by default
    (:data:`SMALL_PRIOR_GPUS_PER_WORKER` for ``small_priors``), 1 / gpus_per_worker actors per GPU for fractions,
    CPUs / cpus_per_worker actors without GPUs."""
    default = SMALL_PRIOR_GPUS_PER_WORKER if settings.small_priors else 1.0
    gpw = settings.gpus_per_worker if settings.gpus_per_worker is not None else (default if n_gpu > 0 else 0.0)
    cpw = settings.cpus_per_worker
    require(gpw >= 0 and cpw > 0, "--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")
    require(
        gpw <= n_gpu or gpw == 0,
        f"--gpus-per-worker {gpw} but the Ray cluster has {n_gpu:g} GPUs: use --gpus-per-worker 0 for CPU workers",
    )
    if settings.workers is not None:
        require(settings.workers >= 1, f"--workers must be >= 1, got {settings.workers}")
        return settings.workers, gpw
    return max(1, int(n_gpu // gpw) if gpw > 0 else int(n_cpu // cpw)), gpw


class LocalEngine:
    """Runs each unit when asked, sequentially in this process, with one cached-prior worker."""

    name = "local"

    def __init__(self, prior_cache: int = 1) -> None:
        self.worker = AssetWorker(threads=None, cache_size=prior_cache)
        self.queue: deque[tuple[str, list[Task]]] = deque()
        self.workers = 1
        self.cpu_only = False
        from fsd_gs.device import resolve_device

        self.device = resolve_device("auto").type

    def idle_slots(self) -> int:
        return 0 if self.queue else 1

    def busy(self) -> bool:
        return bool(self.queue)

    def submit(self, key: str, tasks: list[Task]) -> str:
        self.queue.append((key, tasks))
        return f"local:{os.getpid()}"

    def next_outcomes(self) -> list[Outcome]:
        key, tasks = self.queue.popleft()
        return [Outcome(key, self.worker.run(tasks), worker=f"local:{os.getpid()}")]

    def stop_running(self, grace_s: float) -> Iterator[Outcome]:
        """Nothing runs between calls: a unit runs inside :meth:`next_outcomes`, where the signal stops it."""
        return iter(())

    def close(self, interrupted: bool = False) -> None:
        self.queue.clear()


class RayEngine:
    """Long-lived :class:`AssetWorker` actors on a local or existing Ray cluster; each holds its prior across units."""

    name = "ray"

    def __init__(self, settings: RaySettings) -> None:
        try:
            import ray
            import ray.exceptions  # not imported by ray/__init__.py: makes ray.exceptions known to the type checker
        except ImportError as exc:  # pragma: no cover - ray is a dependency
            raise UserError("the Ray engine needs the ray package (pip install ray), or use --engine local") from exc
        self.ray = ray
        self.settings = settings
        self.owns_ray = False
        if not ray.is_initialized():
            self._init_ray(settings)
        resources = ray.cluster_resources()
        self.workers, gpw = worker_layout(float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), settings)
        cpw = settings.cpus_per_worker
        self.gpus_per_worker = gpw
        self.cpu_only = gpw == 0
        self.device = "cpu" if self.cpu_only else "cuda"
        threads = max(1, int(math.floor(cpw)))
        self.threads = threads
        env = {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": os.environ.get(NO_NATIVE_DUMPS, "1"),
            **settings.env,
        }
        if os.environ.get(CRASH_ENV):
            env[CRASH_ENV] = os.environ[CRASH_ENV]
        self.actor_options = dict(num_cpus=cpw, num_gpus=gpw, max_restarts=0, max_concurrency=1, runtime_env={"env_vars": env})
        self.remote_cls = ray.remote(AssetWorker)
        self.actors: dict[str, Any] = {}
        self.idle: deque[str] = deque()
        self.inflight: dict[Any, tuple[str, str]] = {}  # ObjectRef -> (actor name, unit key)
        self.info_refs: dict[str, Any] = {}  # actor name -> ObjectRef of its info() (pid and host)
        self._spawned = 0
        for _ in range(self.workers):
            self._spawn()

    def _init_ray(self, settings: RaySettings) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault(NO_NATIVE_DUMPS, "1")  # the batch stops on signals itself (fsd_gs/batch/stop.py)
        kwargs: dict[str, Any] = dict(
            include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, configure_logging=True
        )
        if settings.address:
            self.ray.init(address=settings.address, **kwargs)
        else:
            wanted = (settings.workers or 1) * settings.cpus_per_worker
            self.ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(wanted)), object_store_memory=256 * 2**20, **kwargs)
        self.owns_ray = True

    def _spawn(self) -> str:
        name = f"worker{self._spawned}"
        self._spawned += 1
        self.actors[name] = self.remote_cls.options(**self.actor_options).remote(
            threads=self.threads, cache_size=self.settings.prior_cache
        )
        self.info_refs[name] = self.actors[name].info.remote()  # runs before its first unit (one call at a time)
        self.idle.append(name)
        return name

    def idle_slots(self) -> int:
        return len(self.idle)

    def busy(self) -> bool:
        return bool(self.inflight)

    def submit(self, key: str, tasks: list[Task]) -> str:
        name = self.idle.popleft()
        ref = self.actors[name].run.remote(tasks)
        self.inflight[ref] = (name, key)
        return name

    def next_outcomes(self, timeout: float = 1.0) -> list[Outcome]:
        """Units finished within ``timeout`` seconds (short waits keep Ctrl-C responsive)."""
        ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
        outcomes = []
        for ref in ready:
            name, key = self.inflight.pop(ref)
            try:
                results = self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:  # the actor died (killed, OOM, node lost) or the call broke
                reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                self._replace(name)
                outcomes.append(Outcome(key, None, lost=reason, worker=name))
                continue
            self.idle.append(name)
            outcomes.append(Outcome(key, results, worker=name))
        return outcomes

    def stop_running(self, grace_s: float) -> Iterator[Outcome]:
        """Send SIGTERM to each busy actor on this host (its runner saves the running assets and the unit returns
        "interrupted" results) and yield the outcomes that arrive within ``grace_s`` seconds. Actors on other
        hosts are not signalled: they are killed by :meth:`close`, keeping their last periodic checkpoint."""
        host = socket.gethostname()
        for name, _ in list(self.inflight.values()):
            try:
                info: Any = self.ray.get(self.info_refs[name], timeout=5.0)
            except (self.ray.exceptions.RayError, KeyError):
                continue
            if info.get("host") == host:
                try:
                    os.kill(int(info["pid"]), signal.SIGTERM)  # Ray's workers block SIGINT
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        while self.inflight and time.monotonic() < deadline:
            yield from self.next_outcomes(timeout=max(0.05, min(1.0, deadline - time.monotonic())))

    def _replace(self, name: str) -> None:
        actor = self.actors.pop(name)
        self.info_refs.pop(name, None)
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass
        self._spawn()

    def close(self, interrupted: bool = False) -> None:
        """Kill every actor (their units' checkpoints stay on disk) and stop Ray if this engine started it."""
        for actor in self.actors.values():
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors.clear()
        self.info_refs.clear()
        self.inflight.clear()
        self.idle.clear()
        if self.owns_ray:
            self.ray.shutdown()
