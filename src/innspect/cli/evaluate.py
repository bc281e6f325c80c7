"""``innspect evaluate``: score methods' explanations of a model with evaluation metrics.

Explains the inputs with every method, scores every explanation with every metric
(``innspect.evaluation``: Quantus's catalogue) and writes ``results.csv`` (per method and
metric: mean, 95 % interval, rank) and ``results.json`` (the same and every per-sample score).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

from innspect.cli.common import CLIError, parse_options, resolve_methods
from innspect.loading.inputs import check_channels, default_preprocess, input_files, load_input
from innspect.loading.models import load_model
from innspect.util.files import write_text

HELP = "score methods' explanations with evaluation metrics (faithfulness, complexity...)"
DESCRIPTION = """\
Explain the inputs with every method and score each explanation with every metric.

Writes to --out: results.csv (per method and metric: mean over the inputs, 95 % interval,
rank among the methods) and results.json (the same, the explained classes and every
per-input score). Metrics take Quantus's names (docs/evaluation.md); --option KEY=VALUE goes to
every metric that takes KEY.

examples:
  innspect evaluate --model torchvision:resnet18 --weights resnet18.pth --input photos/ \\
      --method gradient lrp.epsilon_plus_flat random \\
      --metric pixel_flipping sparseness mprt --option features_in_step=224
"""
OUT_DEFAULT = "innspect-evaluation"


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``innspect evaluate``."""
    parser.add_argument("--model", required=True, metavar="SPEC", help="as for `innspect analyze`")
    parser.add_argument("--weights", metavar="FILE", help="state dict for the model")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="PNG/JPEG images, .npy arrays (one sample each) or folders of them",
    )
    parser.add_argument(
        "--method", nargs="+", default=[], metavar="NAME", help="analyzers to compare"
    )
    parser.add_argument("--methods", metavar="FILE", help="more analyzer names, one per line")
    parser.add_argument(
        "--metric",
        nargs="+",
        required=True,
        metavar="NAME",
        help="evaluation metrics, Quantus's names in snake case (pixel_flipping, "
        "faithfulness_correlation, sparseness, max_sensitivity, mprt...: docs/evaluation.md)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metric option, e.g. --option features_in_step=16 (repeatable; it goes to every "
        "metric that takes it)",
    )
    parser.add_argument(
        "--target", type=int, metavar="N", help="class to explain and score (default: predicted)"
    )
    parser.add_argument(
        "--preprocess",
        choices=("imagenet", "none"),
        default=None,
        help="as for `innspect analyze` (default: imagenet for torchvision: models)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of random weights and metrics' draws"
    )
    parser.add_argument("--out", default=OUT_DEFAULT, help="output folder (default: %(default)s)")


def metric_keys(name: str) -> set[str]:
    """The options a metric's constructor takes (its own and the shared ones)."""
    from innspect.evaluation import metric_class

    keys: set[str] = set()
    for cls in metric_class(name).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                keys.add(parameter.name)
    return keys - {"self", "method"}


def run(args: argparse.Namespace) -> int:
    """Explain, score and write the results."""
    if args.debug:
        return _run(args)
    logging.getLogger("torch").setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    # Imported when the subcommand runs: innspect.evaluation loads matplotlib (pixel flipping's
    # figure), which `innspect --help` need not.
    import torch

    from innspect.evaluation import create_metric, evaluate, metric_class

    methods = resolve_methods(args.method, args.methods)
    for name in args.metric:
        metric_class(name)  # an unknown name: OptionError with "did you mean", exit 2
    options = parse_options(args.option)
    per_metric = {name: {} for name in args.metric}
    for key, value in options.items():
        takers = [name for name in args.metric if key in metric_keys(name)]
        if not takers:
            raise CLIError(f"--option {key}: none of the metrics {args.metric} takes it")
        for name in takers:
            per_metric[name][key] = value
    metrics = [create_metric(name, **per_metric[name]) for name in args.metric]

    preprocess = args.preprocess or default_preprocess(args.model)
    files, _ = input_files(args.input)
    samples = [load_input(file, preprocess) for file in files]
    model = load_model(args.model, args.weights, example=samples[0].tensor[None], seed=args.seed)
    model = model.module
    for sample in samples:
        check_channels(model, sample)
    shapes = {tuple(sample.tensor.shape) for sample in samples}
    if len(shapes) > 1:
        raise CLIError(f"the inputs must share one shape to be scored together, got {shapes}")
    x = torch.stack([sample.tensor for sample in samples])
    torch.manual_seed(args.seed)  # methods that draw (random, smoothgrad) repeat
    table = evaluate(model, x, methods=methods, metrics=metrics, target=args.target, seed=args.seed)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CLIError(f"cannot create the output folder {out}: {error}") from error
    table.to_csv(out / "results.csv")
    write_text(out / "results.json", json.dumps(_json(table, files), indent=1))
    print(table)
    print(f"wrote {out / 'results.csv'} and {out / 'results.json'}")
    return 0


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _json(table: Any, files: list[Path]) -> dict[str, Any]:
    """The EvaluationTable as JSON-ready data (NaN as null)."""
    rows = [{k: _finite(v) for k, v in row.items()} for row in table.rows()]
    scores = {
        method: {
            metric: [_finite(float(v)) for v in table.scores(method, metric)]
            for metric in table.metrics
        }
        for method in table.methods
    }
    return {
        "inputs": [str(file) for file in files],
        "targets": [int(t) for t in table.targets],
        "methods": table.methods,
        "metrics": table.metrics,
        "results": rows,
        "scores": scores,
    }
