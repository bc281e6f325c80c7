"""Ray backend of ``explain_dataset``: ShardRunner actors and a driver that hands them shards.

Each actor builds the model once from its spec and weights file (never a pickled module),
keeps its analyzers (and so the captured graphs) across shards, and sets its own thread
count. Only the driver writes files: an actor returns a shard's arrays (through Ray's object
store) and the driver writes the shard and updates the index, so a worker that dies loses at
most the shard it was computing, which goes back to the queue and to a fresh actor.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

from innspect.distributed import require_ray
from innspect.errors import InputError

# Test hook: called as _AFTER_SHARD(actors) after each shard the driver has written.
_AFTER_SHARD = None


def connect(address: str | None, num_workers: int | None) -> tuple[Any, bool]:
    """Ray, initialised (a local instance when ``address`` is None); whether we started it."""
    ray = require_ray()
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


def _actor_class(ray: Any) -> Any:
    from innspect.dataset import ShardRunner

    class Worker:
        def __init__(self, settings: tuple, num_threads: int) -> None:
            model, source, methods, options, batch_size, neuron, fingerprint = settings
            self.runner = ShardRunner(
                model, source, methods, options, batch_size, neuron, num_threads
            )
            if self.runner.fingerprint != fingerprint:
                raise InputError(
                    "the model a worker built differs from the driver's (another weights "
                    "file, or random weights without a seed): give weights= a state dict file"
                )

        def compute(self, start: int, stop: int) -> dict:
            return self.runner.compute(start, stop)

    return ray.remote(Worker)


def run_shards(
    settings: tuple,
    index: Any,
    todo: list[int],
    num_workers: int | None,
    address: str | None,
    verbose: bool,
    threads_per_worker: int = 1,
) -> None:
    """Compute the shards ``todo`` on Ray actors and write them through ``index``."""
    from innspect.dataset import _bar, _range, write_shard

    if not todo:
        return
    ray, started = connect(address, num_workers)
    try:
        workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        workers = min(workers, len(todo))
        Worker = _actor_class(ray).options(num_cpus=threads_per_worker)
        shared = ray.put(settings)  # sent once to the object store, not once per actor
        actors = [Worker.remote(shared, threads_per_worker) for _ in range(workers)]
        queue = deque(todo)
        running: dict[Any, tuple[int, int]] = {}  # task -> (actor slot, shard)
        bar = _bar(index, todo, verbose)
        restarts = 0

        def submit(slot: int) -> None:
            shard = queue.popleft()
            task = actors[slot].compute.remote(**_range(index.shards[shard]))
            running[task] = (slot, shard)

        for slot in range(workers):
            if queue:
                submit(slot)
        while running:
            [task], _ = ray.wait(list(running), num_returns=1)
            slot, shard = running.pop(task)
            try:
                arrays = ray.get(task)
            except ray.exceptions.RayActorError:
                # The worker died: its shard goes back to the queue and a fresh actor
                # takes its slot (bounded, so a model that kills every worker fails).
                restarts += 1
                if restarts > 3 * workers:
                    raise
                queue.appendleft(shard)
                actors[slot] = Worker.remote(shared, threads_per_worker)
                submit(slot)
                continue
            except ray.exceptions.RayTaskError as error:
                raise error.as_instanceof_cause() from None
            info = index.shards[shard]
            index.finish(shard, write_shard(index.out / info["file"], arrays, **_range(info)))
            if bar is not None:
                bar.update(info["stop"] - info["start"])
            if _AFTER_SHARD is not None:
                _AFTER_SHARD(actors)
            if queue:
                submit(slot)
        if bar is not None:
            bar.close()
        for actor in actors:
            ray.kill(actor)
    finally:
        if started:
            ray.shutdown()
