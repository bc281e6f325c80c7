"""``python benchmarks/run.py --only cam``: class activation maps beside grad-cam 1.5.7.

Tables measured with run.py's paired method, per model (default resnet50 at ``layer4`` and
ViT-B/16 at its last block's ``ln_1``, grad-cam's documented layers; innspect finds them
itself, grad-cam is given them and, for the ViT, the reshape transform):
- the gradient family (Grad-CAM, HiResCAM, Grad-CAM++, LayerCAM, XGrad-CAM, Eigen-Grad-CAM)
  and grad-cam's classes, against one forward+gradient pass (batch ``--batch``);
- Score-CAM and Ablation-CAM (batch ``--cam-perturb-batch``, default 1: they run one pass
  per channel and image) and grad-cam's, against their floor: the masked forward passes
  Score-CAM needs (16 inputs per pass, timed bare), and for Ablation-CAM the one whole
  forward pass that gives the layer's output and the score, then the passes from the layer
  on over copies of that output (32 per pass, as a plain loop builds them: ``repeat``;
  innspect runs only these passes too; grad-cam runs the whole model per pass).
``--cam-parts`` picks which of the three (gradient, score, ablation) run.
Before timing, each innspect map is checked against grad-cam's (relative L2).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import ModuleType

import torch
import torchvision

import innspect

GRADIENT_METHODS = (
    ("cam.grad", "GradCAM"),
    ("cam.hires", "HiResCAM"),
    ("cam.grad_plus_plus", "GradCAMPlusPlus"),
    ("cam.layer", "LayerCAM"),
    ("cam.xgrad", "XGradCAM"),
    ("cam.eigen_grad", "EigenGradCAM"),
)
PER_PASS = 16  # grad-cam's Score-CAM batch; Ablation-CAM's is 32
ABLATION_PER_PASS = 32


def build(
    model_name: str, size: int
) -> tuple[torch.nn.Module, torch.nn.Module, Callable | None, list, str]:
    """The model, grad-cam's reshape transform and target layers (on a copy of the model:
    grad-cam leaves hooks on it while its objects live, which innspect refuses), and
    innspect's layer."""
    model, reshape, name = _build(model_name, size)
    peer = copy.deepcopy(model)
    if isinstance(peer, torchvision.models.VisionTransformer):
        return model, peer, reshape, [peer.encoder.layers[-1].ln_1], name
    return model, peer, reshape, [peer.layer4[-1]], name


def _build(model_name: str, size: int) -> tuple[torch.nn.Module, Callable | None, str]:
    torch.manual_seed(0)
    if model_name.startswith("vit"):
        model = getattr(torchvision.models, model_name)(weights=None, image_size=size)
        torch.nn.init.normal_(model.heads.head.weight, std=0.01)  # torchvision's is 0
        model.eval()
        grid = size // model.patch_size
        block = model.encoder.layers[-1]

        def reshape(tokens: torch.Tensor) -> torch.Tensor:
            n, _, d = tokens.shape
            return tokens[:, 1:].reshape(n, grid, grid, d).permute(0, 3, 1, 2)

        name = next(n for n, m in model.named_modules() if m is block.ln_1)
        return model, reshape, name
    return getattr(torchvision.models, model_name)(weights=None).eval(), None, "layer4"


def check(ours: torch.Tensor, theirs: object) -> str:
    theirs = torch.as_tensor(theirs, dtype=torch.float64)
    ours = ours[:, 0].to(torch.float64)
    # a constant map (a 1x1 layer) scales to 0 on both sides: report the difference then
    return f"{float((ours - theirs).norm() / theirs.norm().clamp_min(1e-12)):.1e}"


def gradient_rows(run: ModuleType, model_name: str, batch: int, size: int, repeats: int) -> tuple:
    import pytorch_grad_cam

    model, peer_model, reshape, layers, layer = build(model_name, size)
    x = torch.randn(batch, 3, size, size)
    _, reference = run.plain_runs(model, x)
    subjects, agreement = [], []
    for name, peer_name in GRADIENT_METHODS:
        analyzer = innspect.create_analyzer(name, model, layer=layer)
        peer = getattr(pytorch_grad_cam, peer_name)(peer_model, layers, reshape_transform=reshape)
        agreement.append(f"{name} {check(analyzer.analyze(x), peer(x, None))}")
        subjects.append(run.Subject(f"innspect {name}", lambda a=analyzer: a.analyze(x)))
        subjects.append(run.Subject(f"grad-cam {peer_name}", lambda p=peer: p(x, None), peer=True))
    reference_row = run.measure_paired(subjects, reference, repeats)
    return [reference_row] + [s.row() for s in subjects], agreement


def _masked_passes(model: torch.nn.Module, x: torch.Tensor, channels: int) -> Callable:
    """Score-CAM's floor: ``channels`` masked copies of each image, 16 per pass, bare."""
    masks = torch.rand(PER_PASS, 1, *x.shape[2:])

    def passes() -> None:
        with torch.no_grad():
            for i in range(x.shape[0]):
                for start in range(0, channels, PER_PASS):
                    k = min(PER_PASS, channels - start)
                    model(x[i : i + 1] * masks[:k])

    return passes


def _tail(model: torch.nn.Module, x: torch.Tensor) -> tuple[Callable, int]:
    """Ablation-CAM's floor: one whole forward pass (the layer's output and the score the
    drops are taken from), then the model from the layer on, on ``channels`` ablated copies
    of each image's layer output, 32 per pass, bare (eager torchvision code)."""
    with torch.no_grad():
        if isinstance(model, torchvision.models.VisionTransformer):
            block = model.encoder.layers[-1]
            captured = {}
            hook = block.register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
            model(x)
            hook.remove()
            before = captured["x"]
            layer = block.ln_1(before)

            def tail(value: torch.Tensor, i: int) -> torch.Tensor:
                residual = before[i : i + 1].expand(value.shape[0], -1, -1)
                y = block.self_attention(value, value, value, need_weights=False)[0]
                h = residual + y
                h = h + block.mlp(block.ln_2(h))
                return model.heads(model.encoder.ln(h)[:, 0])

            channels = layer.shape[-1]
        else:
            features = torch.nn.Sequential(*list(model.children())[:-2])
            layer = features(x)

            def tail(value: torch.Tensor, i: int) -> torch.Tensor:
                return model.fc(torch.flatten(model.avgpool(value), 1))

            channels = layer.shape[1]

    def passes() -> None:
        with torch.no_grad():
            model(x)
            for i in range(x.shape[0]):
                for start in range(0, channels, ABLATION_PER_PASS):
                    k = min(ABLATION_PER_PASS, channels - start)
                    tail(layer[i : i + 1].repeat(k, *[1] * (layer.dim() - 1)), i)

    return passes, channels


def score_rows(run: ModuleType, model_name: str, batch: int, size: int, repeats: int) -> tuple:
    """Score-CAM beside grad-cam's ScoreCAM, against the bare masked passes."""
    from pytorch_grad_cam import ScoreCAM

    model, peer_model, reshape, layers, layer = build(model_name, size)
    x = torch.randn(batch, 3, size, size)
    _, channels = _tail(model, x)
    ours = innspect.create_analyzer("cam.score", model, layer=layer, batch_size=PER_PASS)
    peer = ScoreCAM(peer_model, layers, reshape_transform=reshape)
    peer.batch_size = PER_PASS
    agreement = f"cam.score {check(ours.analyze(x), peer(x, None))}"
    score = [
        run.Subject("innspect cam.score", lambda: ours.analyze(x)),
        run.Subject("grad-cam ScoreCAM", lambda: peer(x, None), peer=True),
    ]
    floor = run.measure_paired(score, _masked_passes(model, x, channels), repeats)
    return [floor] + [s.row() for s in score], agreement


def ablation_rows(run: ModuleType, model_name: str, batch: int, size: int, repeats: int) -> tuple:
    """Ablation-CAM beside grad-cam's AblationCAM, against the bare passes it needs."""
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit

    model, peer_model, reshape, layers, layer = build(model_name, size)
    x = torch.randn(batch, 3, size, size)
    tail, _ = _tail(model, x)
    ablation_layer = AblationLayerVit() if reshape is not None else AblationLayer()
    ablation = innspect.create_analyzer(
        "cam.ablation", model, layer=layer, batch_size=ABLATION_PER_PASS
    )
    ablation_peer = AblationCAM(
        peer_model, layers, reshape, ablation_layer=ablation_layer, batch_size=ABLATION_PER_PASS
    )
    # grad-cam lowers the ablation value by 1e7 per row of a batch where activations go
    # below 0 (the ViT): its map differs there, by design of that quirk, not of the method
    agreement = f"cam.ablation {check(ablation.analyze(x), ablation_peer(x, None))}"
    rows = [
        run.Subject("innspect cam.ablation", lambda: ablation.analyze(x)),
        run.Subject("grad-cam AblationCAM", lambda: ablation_peer(x, None), peer=True),
    ]
    floor = run.measure_paired(rows, tail, repeats)
    return [floor] + [s.row() for s in rows], agreement


def _floor_table(run: ModuleType, title: str, model: str, batch: int, size: int, rows: list) -> str:
    table = run.render_model_table(model, batch, size, rows)
    table = table.replace("### ", f"### {title}, ", 1)
    table = table.replace("ratio to fwd+grad", "ratio to floor")
    return table.replace("forward+gradient (reference)", "floor: bare passes")


CAM_PARTS = ("gradient", "score", "ablation")


def section(
    run: ModuleType,
    models: list[str],
    batch: int,
    size: int,
    repeats: int,
    perturb_batch: int = 1,
    parts: tuple[str, ...] = CAM_PARTS,
) -> str:
    """The ``--only cam`` tables (the ``parts`` of CAM_PARTS), as Markdown."""
    out = ["## Class activation maps beside grad-cam 1.5.7\n"]
    for model_name in models:
        if "gradient" in parts:
            print(f"{model_name} gradient family:", flush=True)
            rows, agreement = gradient_rows(run, model_name, batch, size, repeats)
            out.append(run.render_model_table(model_name, batch, size, rows))
            out.append("Relative L2 to grad-cam's map: " + "; ".join(agreement) + ".\n")
        agreed = []
        for part, title, rows_of in (
            ("score", "Score-CAM", score_rows),
            ("ablation", "Ablation-CAM", ablation_rows),
        ):
            if part in parts:
                print(f"{model_name} {title}:", flush=True)
                rows, agreement = rows_of(run, model_name, perturb_batch, size, repeats)
                out.append(_floor_table(run, title, model_name, perturb_batch, size, rows))
                agreed.append(agreement)
        if agreed:
            out.append("Relative L2 to grad-cam's map: " + "; ".join(agreed) + ".\n")
    return "\n".join(out)
