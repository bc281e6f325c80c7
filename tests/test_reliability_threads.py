"""Reliability under threads: capture is serialised and analysis never touches module flags.

Each thread test runs a bounded number of trials and stops early at a time limit, so a
slow machine makes it weaker, never slower.
"""

from __future__ import annotations

import functools
import threading
import time

import torch
from torch import nn

import innspect

TIME_LIMIT_S = 6.0


class _Block(nn.Module):
    """A traced-through block, so capture walks many modules (a wide window for a race)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x)) + x


def _deep_net(width: int = 4, depth: int = 24) -> nn.Module:
    return nn.Sequential(*[_Block(width) for _ in range(depth)], nn.Linear(width, 3))


def _run_in_threads(jobs: list) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def wrap(job) -> None:
        try:
            barrier.wait()
            job()
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=wrap, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def _autograd_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    leaf = x.detach().requires_grad_(True)
    out = model(leaf)
    picked = out.gather(1, out.argmax(dim=1, keepdim=True)).sum()
    return torch.autograd.grad(picked, leaf)[0]


def test_concurrent_first_calls_capture_safely_and_leave_torch_unpatched() -> None:
    # torch.fx patches nn.Module.__call__ for the whole process while it traces: two
    # captures at once, or a forward during another thread's capture, used to fail or leave
    # the patch behind.
    x = torch.randn(2, 4)
    original_call, original_getattr = nn.Module.__call__, nn.Module.__getattr__
    start, trials = time.monotonic(), 0
    while trials < 15 and time.monotonic() - start < TIME_LIMIT_S:
        trials += 1
        models = [_deep_net() for _ in range(3)]
        analyzers = [innspect.create_analyzer("gradient", m) for m in models]
        results: dict[int, torch.Tensor] = {}

        def run(i: int, analyzers: list = analyzers, results: dict = results) -> None:
            results[i] = analyzers[i].analyze(x)

        errors = _run_in_threads([functools.partial(run, i) for i in range(len(models))])
        assert not errors, f"trial {trials}: {errors[0]!r}"
        assert nn.Module.__call__ is original_call
        assert nn.Module.__getattr__ is original_getattr
        for i, model in enumerate(models):
            torch.testing.assert_close(results[i], _autograd_gradient(model, x))
    assert nn.Linear(2, 2)(torch.ones(1, 2)).shape == (1, 2)


class _WatchedBatchNorm(nn.BatchNorm1d):
    """Records every write to its ``training`` flag."""

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__["flag_writes"] = []
        super().__init__(*args, **kwargs)

    def __setattr__(self, name: str, value) -> None:
        if name == "training":
            self.__dict__["flag_writes"].append(value)
        super().__setattr__(name, value)


# fx keeps torch.nn layers as leaves by their module name; this one must stay a BatchNorm node.
_WatchedBatchNorm.__module__ = "torch.nn.modules.batchnorm"


def _training_model() -> tuple[nn.Module, _WatchedBatchNorm]:
    norm = _WatchedBatchNorm(8)
    model = nn.Sequential(nn.Linear(4, 8), norm, nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    model.train()
    norm.flag_writes.clear()
    return model, norm


def test_shared_analyzer_on_a_training_model_in_threads_never_touches_its_flags() -> None:
    # One thread's eval_mode() used to restore training=True while another still ran: results
    # depended on the timing and BatchNorm statistics moved.
    model, norm = _training_model()
    stats = (norm.running_mean.clone(), norm.running_var.clone())
    x = torch.randn(5, 4)
    options = {"integrated_gradients": {"steps": 4, "batch_size": 7}}
    for name in ("gradient", "lrp.epsilon", "integrated_gradients", "gradient.baseline"):
        analyzer = innspect.create_analyzer(name, model, **options.get(name, {}))
        expected = analyzer.analyze(x)
        # The eval-mode function, computed by hand on a copy.
        reference = _training_free_copy(model)
        if name.startswith("gradient"):
            torch.testing.assert_close(expected, _autograd_gradient(reference, x))
        results: list[torch.Tensor] = []
        start = time.monotonic()

        def run(analyzer=analyzer, results: list = results, start: float = start) -> None:
            while len(results) < 40 and time.monotonic() - start < TIME_LIMIT_S / 2:
                results.append(analyzer.analyze(x))

        errors = _run_in_threads([run, run, run])
        assert not errors, repr(errors[0])
        assert results
        for result in results:
            torch.testing.assert_close(result, expected, rtol=0, atol=0)
    assert norm.flag_writes == []
    assert all(m.training for m in model.modules())
    torch.testing.assert_close(norm.running_mean, stats[0], rtol=0, atol=0)
    torch.testing.assert_close(norm.running_var, stats[1], rtol=0, atol=0)
    assert int(norm.num_batches_tracked) == 0


def _training_free_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()
