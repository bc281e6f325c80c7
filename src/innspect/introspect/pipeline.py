"""The whole introspection run behind ``innspect introspect``: NAPs -> contrastive NAPs ->
layouts -> topomaps, projections, quality -> index.html, resumable.

Each step records a key (a hash of the settings it depends on and of its inputs) in
``<out>/steps.json`` after its outputs are written (atomically); a second run with the same
settings reuses every finished step, a changed setting redoes that step and those after it.
The output folder follows iNNtrospect's names where they exist (``naps/``,
``contrastive_naps/``, ``vis_data/topomap/``, ``plots/``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from innspect.errors import InputError
from innspect.introspect.collect import collect
from innspect.introspect.corpus import read_corpus_csv, read_processed_corpus
from innspect.introspect.layout import MIN_CHANNELS, normalize_method, topomap_layout
from innspect.introspect.naps import Naps, contrastive_naps
from innspect.introspect.plots import plot_instance_projection, plot_topomaps, safe_file_name
from innspect.introspect.projection import PROJECTION_METHODS, instance_projection
from innspect.introspect.quality import topomap_quality
from innspect.introspect.report import write_report
from innspect.introspect.topomap import group_order, topomap_activations
from innspect.loading.models import ModelSpec, load_model
from innspect.util.files import atomic_path, write_text
from innspect.util.progress import progress

# iNNtrospect's config keys (INTROSPECT.md section 1.3) -> ours
INNTROSPECT_KEYS = {
    "model_path": "model",
    "layer_names_of_interest": "layers",
    "data_path": "data",
    "processed_corpus_path": "out",
    "use_aligned_naps": "align",
}


@dataclass
class IntrospectionSettings:
    """What ``innspect introspect`` does; every field is a config key (iNNtrospect's names
    in :data:`INNTROSPECT_KEYS` are accepted too)."""

    data: str | None = None  # an iNNtrospect corpus folder (corpus.csv + batch .npy files)
    activations: str | None = None  # or an iNNtrospect processed-corpus folder (no model)
    out: str = "innspect-introspect"
    model: str | None = None  # TorchScript file, torchvision:NAME or package.module:factory
    weights: str | None = None  # state dict for the model
    layers: list[str] | None = None  # node names; default: activations after linear layers
    gradients: bool = True
    align: bool = False
    layout: str = "umap"
    distribute_in_circle: bool = False
    distance_metric: str = "cosine"
    threshold: float = 0.01
    contrastive_groups: list[str] | None = None
    weight_by_group_size: bool = False
    projection: str = "umap"  # "umap", "pca" or "none"
    projection_samples: int = 50  # per group
    individual_plots: bool = False
    plot_format: str = "png"
    seed: int = 0
    batch_size: int = 32
    backend: str = "local"  # or "ray" (docs/scale.md)
    address: str | None = None  # the Ray cluster; default: a local one
    workers: int | None = None  # Ray workers

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "the config") -> Any:
        """Settings from a config dictionary; an unknown key is an error naming the known ones."""
        known = {f.name for f in fields(cls)}
        chosen: dict[str, Any] = {}
        for key, value in values.items():
            name = INNTROSPECT_KEYS.get(key, key)
            if name not in known:
                raise InputError(
                    f"unknown key '{key}' in {source}; known keys: {', '.join(sorted(known))} "
                    f"(and iNNtrospect's {', '.join(INNTROSPECT_KEYS)})"
                )
            if name in chosen and chosen[name] != value:
                raise InputError(f"{source} sets '{name}' twice with different values")
            chosen[name] = value
        for name, value in chosen.items():
            _check_type(name, value, source)
        settings = cls(**chosen)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that cannot work, before any work is done."""
        self.layout = normalize_method(self.layout)
        if self.projection not in (*PROJECTION_METHODS, "none"):
            raise InputError(f"unknown projection '{self.projection}'; choose umap, pca or none")
        if self.plot_format not in ("png", "pdf"):
            raise InputError(f"plot_format must be png or pdf, got '{self.plot_format}'")
        if self.backend not in ("local", "ray"):
            raise InputError(f"backend must be local or ray, got '{self.backend}'")
        if self.align and not self.gradients:
            raise InputError("align needs gradients (alignment follows the gradient)")
        if isinstance(self.layers, str):
            self.layers = [self.layers]
        if (self.data is None) == (self.activations is None):
            raise InputError(
                "give either data (a corpus folder with corpus.csv, --data) or activations "
                "(an iNNtrospect processed-corpus folder, --activations), not both or neither"
            )
        if self.batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {self.batch_size}")


_TYPES: dict[str, tuple[type, ...]] = {
    "layers": (list, str, type(None)),
    "contrastive_groups": (list, type(None)),
    "data": (str, type(None)),
    "activations": (str, type(None)),
    "model": (str, type(None)),
    "weights": (str, type(None)),
    "threshold": (int, float),
    "seed": (int,),
    "projection_samples": (int,),
    "address": (str, type(None)),
    "workers": (int, type(None)),
}


def _check_type(name: str, value: Any, source: str) -> None:
    default = IntrospectionSettings.__dataclass_fields__[name].default
    expected = _TYPES.get(name, (type(default),))
    wrong_bool = isinstance(value, bool) and bool not in expected
    if wrong_bool or not isinstance(value, expected):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in expected)
        raise InputError(f"'{name}' in {source} must be {names}, got {value!r}")


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON or TOML (``.toml``) config file as a dictionary."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{path} is not a text file (not UTF-8 at byte {error.start}): a config is JSON or TOML"
        ) from error
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError as error:  # Python 3.10
                raise InputError("TOML configs need Python 3.11+; use JSON") from error
            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except (ValueError, TypeError) as error:
        raise InputError(f"cannot parse {path}: {error}") from error
    if not isinstance(values, dict):
        raise InputError(f"{path} must hold a mapping of keys to values")
    return values


class _Steps:
    """Finished steps and their keys, in ``steps.json``."""

    def __init__(self, out: Path, force: bool) -> None:
        self.path = out / "steps.json"
        self.done: dict[str, str] = {}
        if self.path.is_file() and not force:
            self.done = json.loads(self.path.read_text(encoding="utf-8"))

    def fresh(self, name: str, key: str) -> bool:
        return self.done.get(name) == key

    def finish(self, name: str, key: str) -> None:
        self.done[name] = key
        write_text(self.path, json.dumps(self.done, indent=1))


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_stamp(path: str | os.PathLike | None) -> Any:
    if path is None or not Path(path).exists():
        return None
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def _model_stamp(model: nn.Module) -> str:
    """A hash of the model's parameters and buffers: a retrained model redoes the NAPs."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{type(model).__name__}:{digest.hexdigest()[:16]}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def run_introspection(
    settings: IntrospectionSettings,
    model: nn.Module | None = None,
    *,
    force: bool = False,
    verbose: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) an introspection and write its outputs and ``index.html`` to
    ``settings.out``. Returns the summary also written to ``summary.json``.

    ``model`` may be given directly (else ``settings.model`` is loaded, with
    ``settings.weights``); ``force`` redoes every step.
    """
    settings.check()
    say = log or (print if verbose else (lambda message: None))
    out = Path(settings.out)  # created by the first output: a failed first step leaves nothing
    steps = _Steps(out, force)
    naps_key = _key("naps", _input_stamp(settings, model), settings.layers, settings.align)
    if steps.fresh("naps", naps_key) and (out / "naps" / "naps.json").is_file():
        say("NAPs: reusing the finished step")
        profiles = Naps.load(out / "naps")
    else:
        profiles = _compute_naps(settings, model, verbose)
        profiles.save(out / "naps")
        steps.finish("naps", naps_key)

    contrastive_key = _key(naps_key, settings.contrastive_groups, settings.weight_by_group_size)
    if (
        steps.fresh("contrastive", contrastive_key)
        and (out / "contrastive_naps" / "naps.json").is_file()
    ):
        contrastive = Naps.load(out / "contrastive_naps")
    else:
        contrastive = contrastive_naps(
            profiles, settings.contrastive_groups, settings.weight_by_group_size
        )
        contrastive.save(out / "contrastive_naps")
        steps.finish("contrastive", contrastive_key)

    summary: dict[str, Any] = {
        "settings": asdict(settings),
        "groups": profiles.groups,
        "group_sizes": profiles.group_sizes.tolist(),
        "contrastive_groups": contrastive.groups,
        "layers": [],
    }
    for layer in progress(profiles.layer_names, verbose, desc="topomaps"):
        summary["layers"].append(
            _layer(settings, out, steps, contrastive_key, profiles, contrastive, layer)
        )
    write_text(out / "summary.json", json.dumps(summary, indent=1))

    write_report(out / "index.html", summary)
    say(f"introspection written to {out}/index.html")
    return summary


def _input_stamp(settings: IntrospectionSettings, model: nn.Module | None) -> list[Any]:
    """What the NAPs depend on: the input files (sizes and times), the model, the options."""
    keep = settings.projection_samples if settings.projection != "none" else 0
    if settings.activations is not None:
        root = Path(settings.activations)
        if not root.is_dir():
            raise InputError(f"activations folder {root} not found")
        files = sorted(root.glob("*.json")) + sorted(root.glob("acts/**/*.npy"))
        if settings.align:
            files += sorted(root.glob("grads/**/*.npy"))
        return ["activations", [_file_stamp(p) for p in files], keep]

    rows = read_corpus_csv(settings.data)  # bad rows fail before anything is written
    return [
        "corpus",
        _file_stamp(Path(settings.data) / "corpus.csv"),
        [_file_stamp(r.file) for r in rows],
        settings.model if model is None else _model_stamp(model),
        _file_stamp(settings.weights),
        settings.gradients,
        keep,
    ]


def _compute_naps(settings: IntrospectionSettings, model: nn.Module | None, verbose: bool) -> Naps:

    keep = settings.projection_samples if settings.projection != "none" else 0
    if settings.activations is not None:
        return read_processed_corpus(
            settings.activations, settings.align, settings.layers, keep_samples=keep
        )

    if model is None:
        if settings.model is None:
            raise InputError("no model: give --model SPEC or model_path in the config")

        first = np.load(read_corpus_csv(settings.data)[0].file, allow_pickle=False)
        import torch

        example = torch.as_tensor(first[:1])
        model = load_model(
            settings.model,
            settings.weights,
            example=example,
            seed=0 if settings.backend == "ray" else None,
        ).module
    ray: dict[str, Any] = {}
    if settings.backend == "ray":
        if settings.model is None:
            raise InputError("backend ray builds the model on workers: give --model SPEC")
        ray = {
            "backend": "ray",
            "model_spec": ModelSpec(settings.model, settings.weights),
            "num_workers": settings.workers,
            "address": settings.address,
        }
    return collect(
        model,
        settings.data,
        layers=settings.layers,
        gradients=settings.gradients,
        align=settings.align,
        batch_size=settings.batch_size,
        keep_samples=keep,
        verbose=verbose,
        **ray,
    )


def _layer(
    settings: IntrospectionSettings,
    out: Path,
    steps: _Steps,
    upstream: str,
    profiles: Naps,
    contrastive: Naps,
    layer: str,
) -> dict[str, Any]:
    """Layout, maps, projection and quality of one layer (each step resumable)."""
    stem = safe_file_name(layer)
    nap = contrastive[layer]
    entry: dict[str, Any] = {"name": layer, "file_stem": stem, "shape": list(nap.shape[1:])}
    channels = nap.shape[-1]
    if channels < MIN_CHANNELS:
        entry["skipped"] = f"{channels} channel(s): a map needs at least {MIN_CHANNELS}"
        return entry
    vis = out / "vis_data" / "topomap"
    layout_key = _key(
        upstream,
        layer,
        settings.layout,
        settings.seed,
        settings.distance_metric,
        settings.threshold,
        settings.distribute_in_circle,
    )
    coordinates_file = vis / f"{stem}_coordinates.npy"
    if steps.fresh(f"layout:{layer}", layout_key) and coordinates_file.is_file():
        coordinates = np.load(coordinates_file)
    else:
        try:
            coordinates = topomap_layout(
                contrastive,
                layer,
                settings.layout,
                seed=settings.seed,
                distance_metric=settings.distance_metric,
                threshold=settings.threshold,
                distribute=settings.distribute_in_circle,
            )
        except InputError as error:
            entry["skipped"] = str(error)
            return entry
        _save_npy(coordinates_file, coordinates)
        steps.finish(f"layout:{layer}", layout_key)
    plain_values = topomap_activations(profiles, layer)
    contrastive_values = topomap_activations(contrastive, layer)
    order = group_order(contrastive, layer, settings.distance_metric)
    _save_npy(vis / f"{stem}_activations.npy", plain_values)
    _save_npy(vis / f"{stem}_contrastive_activations.npy", contrastive_values)
    entry["group_order"] = [contrastive.groups[i] for i in order]

    plots_key = _key(layout_key, settings.plot_format, settings.individual_plots)
    plot_dir = out / "plots" / "topomap"
    fmt = settings.plot_format
    entry["topomaps"] = f"plots/topomap/{stem}_naps.{fmt}"
    entry["contrastive_topomaps"] = f"plots/topomap/{stem}_contrastive.{fmt}"
    if not (
        steps.fresh(f"plots:{layer}", plots_key) and (out / entry["contrastive_topomaps"]).is_file()
    ):
        plain_order = [
            profiles.groups.index(g) for g in entry["group_order"] if g in profiles.groups
        ]
        plot_topomaps(
            coordinates,
            plain_values,
            profiles.groups,
            out / entry["topomaps"],
            order=plain_order,
            title=f"{layer}: NAPs",
        )
        plot_topomaps(
            coordinates,
            contrastive_values,
            contrastive.groups,
            out / entry["contrastive_topomaps"],
            order=order,
            title=f"{layer}: contrastive NAPs",
        )
        if settings.individual_plots:
            plot_topomaps(
                coordinates,
                contrastive_values,
                contrastive.groups,
                plot_dir / stem,
                mode="individually",
                file_format=fmt,
            )
        steps.finish(f"plots:{layer}", plots_key)

    if settings.projection != "none" and layer in profiles.samples:
        entry["projection"] = _projection(settings, out, steps, upstream, profiles, layer, stem)

    quality_key = _key(layout_key)
    quality_file = vis / f"{stem}_quality.json"
    if steps.fresh(f"quality:{layer}", quality_key) and quality_file.is_file():
        entry["quality"] = json.loads(quality_file.read_text(encoding="utf-8"))
    else:
        entry["quality"] = topomap_quality(coordinates, contrastive_values)
        write_text(quality_file, json.dumps(entry["quality"], indent=1))
        steps.finish(f"quality:{layer}", quality_key)
    return entry


def _projection(
    settings: IntrospectionSettings,
    out: Path,
    steps: _Steps,
    upstream: str,
    profiles: Naps,
    layer: str,
    stem: str,
) -> str | None:
    relative = f"plots/instance_projection/{stem}_projection.{settings.plot_format}"
    key = _key(upstream, layer, settings.projection, settings.seed, settings.plot_format)
    if steps.fresh(f"projection:{layer}", key) and (out / relative).is_file():
        return relative
    samples = profiles.samples[layer]
    if len(samples) < 4:
        return None
    points = instance_projection(samples, settings.seed, settings.projection)
    _save_npy(out / "vis_data" / "instance_projection" / f"{stem}_projection.npy", points)
    plot_instance_projection(
        points, profiles.sample_groups, out / relative, title=f"{layer} ({settings.projection})"
    )
    steps.finish(f"projection:{layer}", key)
    return relative
