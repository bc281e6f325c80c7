"""stable_repr: the name a data-set run's header gives a function option is the same in
every process for the same function, and differs when what it computes differs."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

from innspect.analyzers.options import stable_repr

_SOURCE = textwrap.dedent(
    """
    def scaled(factor):
        return lambda a, x=None: float(abs(a).sum()) * factor
    """
)


def _scaled(factor: float):
    namespace: dict = {"__name__": "user_metrics"}
    exec(_SOURCE, namespace)  # noqa: S102 - the same source in two processes
    return namespace["scaled"](factor)


def test_the_same_function_has_one_name_in_every_process() -> None:
    here = stable_repr({"complexity_func": _scaled(2.0)})
    script = (
        "import textwrap, sys\n"
        "from innspect.analyzers.options import stable_repr\n"
        f"namespace = {{'__name__': 'user_metrics'}}\nexec({_SOURCE!r}, namespace)\n"
        "print(stable_repr({'complexity_func': namespace['scaled'](2.0)}))\n"
    )
    there = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert here == there
    assert "0x" not in here  # no memory address


def test_other_code_or_captured_values_give_other_names() -> None:
    assert stable_repr(_scaled(2.0)) != stable_repr(_scaled(3.0))  # captured value
    assert stable_repr(lambda a: a + 1) != stable_repr(lambda a: a + 2)  # body
    assert stable_repr(functools.partial(max, 1)) != stable_repr(functools.partial(max, 2))
    assert stable_repr([1, "a", None]) == repr(["1", "'a'", "None"])
