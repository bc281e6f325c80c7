"""Ray backend: actors that keep a model, and a driver that hands them ranges of samples.

Each actor builds the model once from its spec and weights file (never a pickled module),
checks it against the driver's fingerprint, sets its own thread count and keeps what a job
caches (analyzers, captured graphs) across tasks. A task is a *job* (a small picklable
object: the data source and what to compute) applied to a range of samples; its result
comes back through Ray's object store and only the driver writes files. A worker that dies
loses at most the range it was computing, which goes back to the queue and to a fresh actor.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from innspect.errors import InputError
from innspect.loading.models import model_fingerprint
from innspect.util.extras import require

# Test hook: called as _AFTER_TASK(actors) after each result the driver has handled.
_AFTER_TASK = None


def connect(address: str | None, num_workers: int | None) -> tuple[Any, bool]:
    """Ray, initialised (a local instance when ``address`` is None); whether we started it."""
    ray = require("ray", "backend='ray'", extra="ray")
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is not None:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_workers or os.cpu_count() or 1
    # Workers import innspect as this process does (a source checkout on PYTHONPATH too).
    path = os.environ.get("PYTHONPATH")
    if path:
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
    ray.init(**kwargs)
    return ray, True


class Worker:
    """The actor: one model, built from its spec, and a cache jobs keep their state in."""

    def __init__(
        self, spec: Any, example: np.ndarray, fingerprint: str, threads: int, gpu: bool = False
    ) -> None:
        torch.set_num_threads(threads)
        self.model = spec.load(torch.as_tensor(example))
        if model_fingerprint(self.model) != fingerprint:
            raise InputError(
                "the model a worker built differs from the driver's (another weights file, "
                "or random weights without a seed): give weights= a state dict file"
            )
        if gpu:
            # Ray gave this actor its GPU(s) through CUDA_VISIBLE_DEVICES: "cuda" is its own.
            # Jobs hand NumPy batches to the analyzers, which put them on the model's device.
            if not torch.cuda.is_available():
                raise InputError("a Ray worker was given a GPU but torch sees no CUDA device")
            self.model = self.model.to("cuda")
        self.cache: dict[str, Any] = {}
        self.token: str | None = None

    def ready(self) -> bool:
        return True

    def run(self, job: Callable[..., Any], start: int, stop: int) -> Any:
        # An actor serves several runs in a session: what a job cached is for that job only.
        token = getattr(job, "token", None)
        if token != self.token:
            self.cache, self.token = {}, token
        return job(self.model, self.cache, start, stop)


# Actors kept alive between runs on a Ray instance this process did not start (building a
# worker's model costs seconds): by cluster connection, model spec, fingerprint and threads.
_POOLS: dict[tuple, list[Any]] = {}


def run_jobs(
    spec: Any,
    example: np.ndarray,
    fingerprint: str,
    job: Callable[..., Any],
    ranges: Sequence[tuple[int, int]],
    on_result: Callable[[int, Any], None],
    num_workers: int | None = None,
    address: str | None = None,
    threads_per_worker: int = 1,
    gpus_per_worker: float = 0.0,
) -> None:
    """Apply ``job`` to every ``(start, stop)`` range on Ray actors; ``on_result(i, result)``
    runs in this process as each range ``i`` finishes (in completion order). With
    ``gpus_per_worker`` > 0 every actor reserves that many of the cluster's GPUs (a fraction
    shares one) and runs its model there."""
    if not ranges:
        return
    if gpus_per_worker < 0:
        raise InputError(f"gpus_per_worker must be >= 0, got {gpus_per_worker}")
    ray, started = connect(address, num_workers)
    try:
        resources = ray.cluster_resources()
        cpus = int(resources.get("CPU", 1)) // threads_per_worker
        if num_workers is not None and num_workers > cpus:
            # Actors beyond the cluster's CPUs would wait for resources forever.
            raise InputError(
                f"{num_workers} workers need {num_workers * threads_per_worker} CPUs; the Ray "
                f"cluster has {cpus * threads_per_worker}: ask for fewer or add nodes"
            )
        workers = min(num_workers or max(1, cpus), len(ranges))
        if gpus_per_worker > 0:
            gpus = float(resources.get("GPU", 0))
            if gpus < gpus_per_worker:
                raise InputError(
                    f"gpus_per_worker={gpus_per_worker} but the Ray cluster has {gpus:g} GPUs: "
                    "start Ray on machines with GPUs (ray start --num-gpus N) or leave it at 0"
                )
            workers = min(workers, int(gpus // gpus_per_worker))
        actor = ray.remote(Worker).options(num_cpus=threads_per_worker, num_gpus=gpus_per_worker)
        shared = ray.put(job)  # sent once to the object store, not once per task

        def new_actor() -> Any:
            return actor.remote(spec, example, fingerprint, threads_per_worker, gpus_per_worker > 0)

        key = (
            ray.get_runtime_context().get_job_id(),
            spec,
            fingerprint,
            threads_per_worker,
            gpus_per_worker,
        )
        for other in [k for k in _POOLS if k != key]:
            # One pool at a time: idle actors of another model would hold the CPUs.
            for each in _POOLS.pop(other):
                ray.kill(each)
        pool = [] if started else _POOLS.setdefault(key, [])
        while len(pool) < workers:
            pool.append(new_actor())
        actors = pool[:workers]
        for slot in range(workers):
            # A worker that cannot build the model fails the run at once, with its reason;
            # a pooled one that died since the last run is replaced.
            try:
                ray.get(actors[slot].ready.remote())
            except ray.exceptions.RayActorError:
                actors[slot] = pool[slot] = new_actor()
                try:
                    ray.get(actors[slot].ready.remote())
                except ray.exceptions.RayActorError as error:
                    del pool[slot:]
                    raise InputError(
                        f"a Ray worker could not build the model {spec}: {_reason(error)}"
                    ) from None
        queue = deque(range(len(ranges)))
        running: dict[Any, tuple[int, int]] = {}  # task -> (actor slot, range)
        restarts = 0

        def submit(slot: int) -> None:
            i = queue.popleft()
            running[actors[slot].run.remote(shared, *ranges[i])] = (slot, i)

        for slot in range(workers):
            if queue:
                submit(slot)
        while running:
            [task], _ = ray.wait(list(running), num_returns=1)
            slot, i = running.pop(task)
            try:
                result = ray.get(task)
            except ray.exceptions.RayActorError:
                # The worker died: its range goes back to the queue and a fresh actor
                # takes the slot (bounded, so a model that kills every worker fails).
                restarts += 1
                if restarts > 3 * workers:
                    raise
                queue.appendleft(i)
                actors[slot] = pool[slot] = new_actor()
                submit(slot)
                continue
            except ray.exceptions.RayTaskError as error:
                raise error.as_instanceof_cause() from None
            on_result(i, result)
            if _AFTER_TASK is not None:
                _AFTER_TASK(actors)
            if queue:
                submit(slot)
    finally:
        if started:
            ray.shutdown()


def _reason(error: Exception) -> str:
    """The last line of the worker's traceback (the exception that killed its creation)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    found = [line for line in lines if "Error:" in line or "Exception:" in line]
    return (found or lines or ["unknown"])[-1]
