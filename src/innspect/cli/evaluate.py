"""``innspect evaluate``: score methods' explanations of a model with evaluation metrics.

Explains the inputs with every method, scores every explanation with every metric
(``innspect.evaluation``: Quantus's catalogue) and writes ``results.csv`` (per method and
metric: mean, 95 % interval, rank), ``results.json`` (the same and every per-sample score), the
figures of ``innspect.evaluation.plots`` (``curves_<family>.png``, ``ranks.png``) and, with
``--report``, a self-contained ``index.html``. ``--mask DIR`` gives the localisation metrics one
mask per input: the file of the same stem in DIR (``.npy``, or an image whose non-zero pixels
are the object).
"""

from __future__ import annotations

import argparse
import html
import inspect
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from innspect.cli.common import CLIError, parse_options, quiet_unless_debug, resolve_methods
from innspect.cli.evaluate_dataset import add_dataset_arguments, run_dataset
from innspect.loading.inputs import check_channels, default_preprocess, input_files, load_input
from innspect.loading.models import load_model
from innspect.util.files import write_text

HELP = "score methods' explanations with evaluation metrics (faithfulness, complexity...)"
DESCRIPTION = """\
Explain the inputs with every method and score each explanation with every metric.

Writes to --out: results.csv (per method and metric: mean over the inputs, 95 % interval,
rank among the methods), results.json (the same, the explained classes and every per-input
score), ranks.png (methods x metrics: mean and rank per cell, rows by mean rank),
curves_<family>.png for metrics with curves (pixel flipping, ROAD, MPRT...) and, with --report,
index.html. Metrics take Quantus's names (docs/evaluation.md); --option KEY=VALUE goes to every
metric that takes KEY. Localisation metrics (pointing_game, relevance_mass_accuracy...) need
--mask DIR: for each input the file of the same stem in DIR, a .npy array or an image (non-zero
pixels are the object), shaped like the input (H x W or 1 x H x W is broadcast over channels).

examples:
  innspect evaluate --model torchvision:resnet18 --weights resnet18.pth --input photos/ \\
      --method gradient lrp.epsilon_plus_flat random \\
      --metric pixel_flipping sparseness mprt --option features_in_step=224 --report
  innspect evaluate --model m.pt --input images/ --mask masks/ --method gradient \\
      --metric pointing_game relevance_mass_accuracy
  innspect evaluate --model torchvision:resnet18 --weights resnet18.pth --input data.h5 \\
      --backend local --method gradient lrp.epsilon_plus_flat --metric pixel_flipping \\
      --target label --out scores/

With --backend local|ray, --input is one data set (a folder of images, a .npy or .h5 file)
scored in shards (innspect.evaluation.evaluate_dataset): an interrupted run resumes where it
stopped, results.json and results.csv hold the merged means and 95 % intervals, and --mask
may also be one .npy file of every sample's mask. docs/scale.md.
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
        "--target",
        default="prediction",
        metavar="N|prediction|label",
        help="class to explain and score: a class index, or each input's predicted class "
        "(default); with --backend, 'label' takes the data set's labels",
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
    parser.add_argument(
        "--mask",
        metavar="DIR",
        help="masks for the localisation metrics: per input, the .npy or image of the same stem",
    )
    parser.add_argument(
        "--report", action="store_true", help="also write index.html, a self-contained page"
    )
    parser.add_argument("--out", default=OUT_DEFAULT, help="output folder (default: %(default)s)")
    add_dataset_arguments(parser)  # --backend: a whole data set into shards (docs/scale.md)


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
    return quiet_unless_debug(_run, args)


def _run(args: argparse.Namespace) -> int:
    # Imported when the subcommand runs: innspect.evaluation loads matplotlib (pixel flipping's
    # figure), which `innspect --help` need not.
    import torch

    from innspect.evaluation import create_metric, evaluate, metric_class
    from innspect.evaluation.plots import write_figures

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
    if args.backend is not None or args.address is not None or args.workers is not None:
        return run_dataset(args, methods, per_metric)
    target = _single_target(args.target)
    metrics = [create_metric(name, **per_metric[name]) for name in args.metric]
    needing = [m.name for m in metrics if m.needs_mask]
    if needing and args.mask is None:
        raise CLIError(f"{', '.join(needing)} need(s) --mask DIR: one mask per input")

    preprocess = args.preprocess or default_preprocess(args.model)
    files, _ = input_files(args.input)
    samples = [load_input(file, preprocess) for file in files]
    loaded = load_model(args.model, args.weights, example=samples[0].tensor[None], seed=args.seed)
    model = loaded.module
    for sample in samples:
        check_channels(model, sample)
    shapes = {tuple(sample.tensor.shape) for sample in samples}
    if len(shapes) > 1:
        raise CLIError(f"the inputs must share one shape to be scored together, got {shapes}")
    x = torch.stack([sample.tensor for sample in samples])
    mask = None
    if args.mask is not None:
        mask = torch.from_numpy(np.stack([load_mask(args.mask, f, x.shape[1:]) for f in files]))
    torch.manual_seed(args.seed)  # methods that draw (random, smoothgrad) repeat
    table = evaluate(
        model, x, methods=methods, metrics=metrics, target=target, mask=mask, seed=args.seed
    )
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CLIError(f"cannot create the output folder {out}: {error}") from error
    table.to_csv(out / "results.csv")
    figures = write_figures(table, out)
    data = _json(table, files)
    data["figures"] = figures
    data["options"] = {name: per_metric[name] for name in args.metric}
    data["random_weights"] = loaded.random_weights
    write_text(out / "results.json", json.dumps(data, indent=1))
    if args.report:
        # cli.report loads matplotlib (through innspect.viz): imported when it is needed
        from innspect.cli.report import _STYLE, _data_uri

        page = render_report(out, table, data, args, style=_STYLE, data_uri=_data_uri)
        write_text(out / "index.html", page)
    print(table)
    written = ["results.csv", "results.json", *figures] + (["index.html"] * args.report)
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def _single_target(text: str) -> int | None:
    """``--target`` for input files: a class index, or None for each input's prediction."""
    if text == "prediction":
        return None
    if text == "label":
        raise CLIError("--target label needs a data set with labels: give it with --backend")
    try:
        return int(text)
    except ValueError:
        raise CLIError(
            f"--target must be a class index, 'prediction' or (with --backend) 'label'; "
            f"got {text!r}"
        ) from None


def load_mask(folder: str, input_file: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The boolean mask of one input: the file of the same stem in ``folder`` (an .npy array,
    or an image whose non-zero pixels are the object), checked against the input's ``shape``
    (C, H, W, or any rank); (H, W) and (1, H, W) masks are broadcast over the channels
    (``innspect.evaluation.sample_inputs``, as ``evaluate_dataset(masks=DIR)``)."""
    # Imported here as the command's other evaluation imports are: the evaluation package
    # loads matplotlib, and `innspect --help` must not (tests/test_cli.py).
    from innspect.evaluation.sample_inputs import find_mask_file, fit_mask, read_mask_file

    directory = Path(folder)
    if not directory.is_dir():
        raise CLIError(f"--mask {folder}: not a folder (give a folder of one mask per input)")
    file = find_mask_file(directory, input_file.stem, input_file.name)
    return fit_mask(read_mask_file(file), shape, f"the mask {file}", f"its input {input_file.name}")


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


def render_report(
    folder: Path, table: Any, data: dict[str, Any], args: argparse.Namespace, **shared: Any
) -> str:
    """The report page: settings, the ranked table, every figure embedded (it can be moved or
    mailed on its own). ``shared``: the style and picture embedding of ``innspect analyze``'s
    page (``style``, ``data_uri``)."""
    e = html.escape
    if data["random_weights"]:
        weights = f"random initial weights (seed {args.seed}): the scores mean little"
    elif args.weights:
        weights = f"weights <code>{e(args.weights)}</code>"
    else:
        weights = "the weights in the model file"
    ranks = {metric: table.ranks(metric) for metric in table.metrics}
    head = "".join(f"<th>{e(metric)}{_arrow(table, metric)}</th>" for metric in table.metrics)
    body = []
    for method in table.methods:
        cells = []
        for metric in table.metrics:
            mean, low, high, n = mean_interval_of(table, method, metric)
            interval = "" if math.isnan(low) else f" <small>[{low:.3g}, {high:.3g}]</small>"
            rank = ranks[metric].get(method)
            rank_text = f" <b>#{rank}</b>" if rank is not None else ""
            cells.append(f'<td class="num">{mean:.4g}{interval}{rank_text}</td>')
        body.append(f"<tr><td><code>{e(method)}</code></td>{''.join(cells)}</tr>")
    options = "".join(
        f"<tr><td><code>{e(metric)}</code></td><td>"
        + (", ".join(f"<code>{e(k)}={e(repr(v))}</code>" for k, v in opts.items()) or "defaults")
        + "</td></tr>"
        for metric, opts in data["options"].items()
    )
    figures = "".join(
        f"<h2>{e(name.removesuffix('.png').replace('_', ' '))}</h2>"
        f'<img src="{shared["data_uri"](folder / name)}" alt="{e(name)}">'
        for name in data["figures"]
    )
    inputs = ", ".join(
        f"<code>{e(Path(file).name)}</code> (class {target})"
        for file, target in zip(data["inputs"], data["targets"], strict=True)
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>innspect evaluate: {e(args.model)}</title>
<style>{shared["style"]}</style>
</head>
<body>
<h1>innspect evaluate</h1>
<p>Model <code>{e(args.model)}</code> with {weights}. {len(data["inputs"])} input(s), explained
and scored for the class given: {inputs}.</p>
<p class="note">Each cell: the mean score over the inputs, its 95&nbsp;% interval (Student's t)
and the method's rank among the methods for that metric (#1 best; &uarr; higher is better,
&darr; lower is better). The metrics follow Quantus 0.6.0 and their papers
(docs/evaluation.md lists where innspect differs).</p>
<h2>Results</h2>
<table><thead><tr><th>method</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>
<h2>Metric options</h2>
<table><thead><tr><th>metric</th><th>options</th></tr></thead><tbody>{options}</tbody></table>
{figures}
<p class="muted">Written by <code>innspect evaluate</code>; results.csv and results.json
(every per-input score) are in the same folder as this page.</p>
</body>
</html>
"""


def mean_interval_of(table: Any, method: str, metric: str) -> tuple[float, float, float, int]:
    """Mean, 95 % interval and count of one cell (``evaluation.table.mean_interval``)."""
    from innspect.evaluation.table import mean_interval

    return mean_interval(table.scores(method, metric))


def _arrow(table: Any, metric: str) -> str:
    direction = table.results[table.methods[0]][metric].higher_is_better
    return {True: " &uarr;", False: " &darr;"}.get(direction, "")
