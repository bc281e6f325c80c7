"""Exceptions raised by innspect; each message says what was wrong and what to do."""

from __future__ import annotations

import platform
import re
from importlib.metadata import PackageNotFoundError, version


class InnspectError(Exception):
    """Base class of every error innspect raises on purpose."""


class NotAnalyzableModelError(InnspectError):
    """The model could not be captured as a graph (neither torch.fx nor torch.export)."""


class UnsupportedNodeError(InnspectError):
    """A node of the model's graph has no mapping for the chosen method."""

    def __init__(self, node_name: str, operation: str, method: str, hint: str = "") -> None:
        self.node_name = node_name
        self.operation = operation
        self.method = method
        message = f"node '{node_name}' ({operation}) has no mapping for method '{method}'" + (
            f": {hint}" if hint else ""
        )
        super().__init__(message)


class OutputActivationError(InnspectError, ValueError):
    """The model's output passes through softmax or another output activation."""


class InputError(InnspectError, ValueError):
    """The input given to an analyzer is malformed (shape, dtype, device, NaN...)."""


class NeuronSelectionError(InnspectError, ValueError):
    """The neuron selection mode or index is invalid for this model or call."""


class NonFiniteRelevanceError(InnspectError, FloatingPointError):
    """The reverse pass produced NaN or infinite values (with ``reverse_check_finite``)."""


class OutputSelectionError(InnspectError, ValueError):
    """The output or target to explain is ambiguous or malformed (``output=``, ``target=``)."""


class OptionError(InnspectError, ValueError):
    """An analyzer option has the wrong type or is out of range."""


class ConfigFileError(InnspectError, ValueError):
    """A saved analyzer file is damaged, not an innspect file, or holds invalid options."""


class LoadingError(InputError):
    """A model, weights, labels or input file, or a data set, could not be loaded: missing,
    unreadable, or not what it claims to be."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message without terminal colour codes (torch and
    PIL errors can span pages), or its type's name when the message is empty."""
    text = _ANSI.sub("", str(error)).strip().splitlines()
    return text[0] if text else type(error).__name__


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ModelChangedError(InnspectError, RuntimeError):
    """The model's weights or statistics changed during every attempt of an analysis (a
    training step in another thread): the explanation would mix two models."""


class InternalError(InnspectError, RuntimeError):
    """innspect failed on a model and input that work without it: a defect of innspect, not
    of the input. The message names the node and operation that failed, the versions, and
    what to send with a report (``node``, ``operation``, ``versions`` hold them too)."""

    def __init__(
        self,
        node: str,
        operation: str,
        detail: str,
        shapes: str = "",
        reason: str = "the model itself runs on this input",
    ) -> None:
        self.node = node
        self.operation = operation
        self.versions = {
            "innspect": _installed("innspect"),
            "torch": _installed("torch"),
            "python": platform.python_version(),
        }
        on = f" on an input of shape {shapes}" if shapes else ""
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        super().__init__(
            f"internal error: innspect failed at node '{node}' ({operation}){on}, although "
            f"{reason}: {detail}. This is a defect of innspect, not of your input; please "
            f"report it with this message ({versions}) and a minimal reproduction: how the "
            "model is built (random weights suffice), the input's shape and dtype, and the "
            "analyzer's name and options"
        )

    def __reduce__(self) -> tuple:
        # Pickled as built (Ray sends errors between processes): __init__ takes more than
        # the message that BaseException's own reduce would pass back.
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type, args: tuple, state: dict) -> BaseException:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # a source tree on sys.path without an install
        return "not installed"
