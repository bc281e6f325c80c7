"""``innspect methods``: list every analyzer with its options."""

from __future__ import annotations

import argparse
import inspect

from innspect.analyzers.api import Analyzer, analyzer_parameters
from innspect.analyzers.composed import ComposedAnalyzer
from innspect.analyzers.families import grouped
from innspect.analyzers.registry import analyzer_class, create_analyzer, describe_analyzers
from innspect.analyzers.reverse import ReverseAnalyzer
from innspect.cli.common import CLIError, parse_options, resolve_methods
from innspect.loading.models import load_model

HELP = "list the analyzers and their options"
_SHARED_BASES = (Analyzer, ReverseAnalyzer, ComposedAnalyzer)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``innspect methods`` (only for ``--plan``)."""
    parser.add_argument(
        "--plan", metavar="NAME", help="print the rule each node of --model gets from NAME"
    )
    parser.add_argument("--model", metavar="SPEC", help="the model for --plan (as for analyze)")
    parser.add_argument("--weights", metavar="FILE", help="state dict for the model")
    parser.add_argument(
        "--input-shape",
        metavar="C,H,W",
        help="one sample's shape, for models that need an example input to be captured",
    )
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="analyzer option"
    )


def run(args: argparse.Namespace) -> int:
    """Print each analyzer, its description and options (or, with --plan, a model's plan)."""
    if getattr(args, "plan", None) is not None:
        return _plan(args)

    descriptions = describe_analyzers()
    width = max(len(name) for name in descriptions) + 2
    for family, names in grouped(list(descriptions)):
        print(f"{family.title}\n{'-' * len(family.title)}")
        for name in names:
            cls = analyzer_class(name)
            print(f"{name:<{width}}{descriptions[name]}")
            options = own_options(cls)
            if options:
                print(f"{'':<{width}}options: {', '.join(options)}")
            if cls.paper:
                print(f"{'':<{width}}paper: {cls.paper}")
        print()
    print(
        "\nEvery analyzer also takes neuron_selection_mode ('max_activation', 'index', 'all');"
        " pass options with `innspect analyze --option KEY=VALUE`."
    )
    return 0


def own_options(cls: type) -> list[str]:
    """The method's own constructor options as ``name=default`` (or ``name (required)``):
    the class's and its bases' up to the shared ones (``Analyzer``, ``ReverseAnalyzer``,
    ``ComposedAnalyzer``: selection and reverse options every method takes)."""
    options: dict[str, str] = {}
    shared = analyzer_parameters(Analyzer)[0]
    # A preset's own options are all it takes beyond the shared ones (it fixes the rest).
    bases = cls.__mro__[:1] if hasattr(cls, "preset") else cls.__mro__
    for klass in bases:
        if klass in _SHARED_BASES or not issubclass(klass, Analyzer):
            break
        if "__init__" not in klass.__dict__:
            continue
        signature = inspect.signature(klass.__init__)
        for index, (name, parameter) in enumerate(signature.parameters.items()):
            if index < 2 or name in shared or name.startswith("reverse_"):
                continue
            if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                continue
            if name in options:
                continue
            if parameter.default is inspect.Parameter.empty:
                options[name] = f"{name} (required)"
            else:
                options[name] = f"{name}={parameter.default!r}"
    return list(options.values())


def _plan(args: argparse.Namespace) -> int:
    """``innspect methods --plan NAME --model SPEC``: the rule of every node, as a table."""
    import torch

    if args.model is None:
        raise CLIError("--plan needs --model SPEC (a torchvision:NAME, a factory or a file)")
    (method,) = resolve_methods([args.plan], None)
    example = None
    if args.input_shape:
        try:
            shape = [int(part) for part in args.input_shape.split(",")]
        except ValueError as error:
            raise CLIError(
                f"--input-shape needs C,H,W integers, got '{args.input_shape}'"
            ) from error
        example = torch.zeros(1, *shape)
    model = load_model(args.model, args.weights, example=example).module
    if example is not None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        example = example.to(dtype) if dtype is not None else example
    options = parse_options(args.option)
    try:
        analyzer = create_analyzer(method, model, **options)
    except (TypeError, ValueError) as error:
        raise CLIError(f"cannot create {method} with {options}: {error}") from error
    if not hasattr(analyzer, "plan"):
        raise CLIError(f"{method} does not walk the model's graph: it has no plan")
    print(analyzer.plan(example))
    return 0
