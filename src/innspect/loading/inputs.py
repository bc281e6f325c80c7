"""Input files as ``innspect analyze`` takes them: PNG/JPEG images (optionally with ImageNet's
preprocessing) and ``.npy`` arrays, each with the geometry to draw overlays on. Every
failure is a ``LoadingError`` whose one-line message says what was wrong.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from innspect.errors import LoadingError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


INPUT_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


PREPROCESS_MODES = ("imagenet", "none")


# -- inputs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """How a model input was cut from the user's image: resized, then cropped.

    The image of ``original`` (width, height) pixels was resized to ``resized`` (width, height)
    and the box ``crop`` (left, top, width, height) of the resized image is the model input.
    Without preprocessing both are the identity.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]

    @staticmethod
    def identity(width: int, height: int) -> Geometry:
        """The model input is the image as it is."""
        return Geometry((width, height), (width, height), (0, 0, width, height))

    def crop_in_original(self) -> tuple[float, float, float, float]:
        """The crop box (left, top, right, bottom) in the original image's pixel coordinates."""
        sx = self.original[0] / self.resized[0]
        sy = self.original[1] / self.resized[1]
        left, top, width, height = self.crop
        return left * sx, top * sy, (left + width) * sx, (top + height) * sy

    def to_original(self, values: np.ndarray) -> np.ndarray:
        """Map a (height, width) map over the model input back onto the original image.

        Each original pixel centre is carried through the resize and the crop and the map is
        sampled there bilinearly (pixel centres at half-integers, as in PIL's resize); pixels
        that fall outside the crop are NaN.
        """
        left, top, width, height = self.crop
        if values.shape != (height, width):
            raise ValueError(f"map of shape {values.shape} for a crop of {width} x {height}")
        out_w, out_h = self.original
        xs = (np.arange(out_w) + 0.5) * self.resized[0] / out_w - left
        ys = (np.arange(out_h) + 0.5) * self.resized[1] / out_h - top
        grid_x = torch.as_tensor(xs / width * 2 - 1, dtype=torch.float64)
        grid_y = torch.as_tensor(ys / height * 2 - 1, dtype=torch.float64)
        gy, gx = torch.meshgrid(grid_y, grid_x, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None]
        source = torch.as_tensor(values, dtype=torch.float64)[None, None]
        sampled = F.grid_sample(
            source, grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0, 0].numpy()
        inside = (gx.abs() <= 1) & (gy.abs() <= 1)
        return np.where(inside.numpy(), sampled, np.nan)


@dataclass
class LoadedInput:
    """One input sample (no batch axis), the picture it came from and how it was cut."""

    path: Path
    tensor: torch.Tensor
    picture: np.ndarray | None  # (H, W, 3) float in [0, 1] as the user gave it, if an image
    geometry: Geometry | None


def input_files(paths: list[str]) -> tuple[list[Path], bool]:
    """The files named on the command line, a directory standing for the inputs in it.

    Returns the files and whether a directory was given.
    """
    files: list[Path] = []
    any_directory = False
    for name in paths:
        path = Path(name)
        if path.is_dir():
            any_directory = True
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES
            )
            if not found:
                raise LoadingError(
                    f"no inputs in folder {path}: it has no {', '.join(INPUT_SUFFIXES)} files"
                )
            files.extend(found)
        elif not path.is_file():
            raise LoadingError(f"input file not found: {path}")
        else:
            files.append(path)
    return files, any_directory


def load_input(path: str | os.PathLike, preprocess: str) -> LoadedInput:
    """One input sample from an image or an .npy file.

    Images: with ``preprocess="imagenet"`` resized (shorter side 256), centre-cropped to
    224 x 224, RGB and normalised with ImageNet's mean and std; with "none" only scaled to
    [0, 1] as (1, H, W) for greyscale or (3, H, W) for colour (16-bit images keep their 16
    bits; an alpha channel is dropped). ``.npy``: the array as it is.
    """
    file = Path(path)
    if not file.is_file():
        raise LoadingError(f"input file not found: {file}")
    suffix = file.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(file, allow_pickle=False)
        except Exception as error:  # noqa: BLE001 - any decoding failure is bad input
            raise LoadingError(
                f"cannot read {file} as a .npy array: {first_line(error)}"
            ) from error
        if array.dtype.kind not in "fiub":
            raise LoadingError(f"{file} holds {array.dtype} values; a numeric array is needed")
        tensor = torch.as_tensor(array.astype(np.float32))
        picture, geometry = _array_picture(array)
        return LoadedInput(file, tensor, picture, geometry)
    if suffix in IMAGE_SUFFIXES:
        return _load_image(file, preprocess)
    raise LoadingError(
        f"unsupported input {file}: use PNG/JPEG images or .npy arrays "
        f"({', '.join(INPUT_SUFFIXES)})"
    )


def as_channels_last(sample: LoadedInput) -> LoadedInput:
    """``sample`` for a model that takes channels last (a Keras model's layout): an image's
    (C, H, W) tensor becomes (H, W, C); an .npy array is taken as the user wrote it, in that
    layout, and its picture is read with the channels last."""
    if sample.tensor.ndim != 3:
        return sample
    if sample.path.suffix.lower() in IMAGE_SUFFIXES:
        return dataclasses.replace(sample, tensor=sample.tensor.permute(1, 2, 0).contiguous())
    array = np.moveaxis(sample.tensor.numpy(), -1, 0)
    picture, geometry = _array_picture(array)
    return dataclasses.replace(sample, picture=picture, geometry=geometry)


def _array_picture(array: np.ndarray) -> tuple[np.ndarray | None, Geometry | None]:
    """An .npy array shaped like an image (C in 1, 3; H, W) as a picture to draw maps on."""
    if array.ndim != 3 or array.shape[0] not in (1, 3) or min(array.shape[1:]) < 2:
        return None, None
    values = np.moveaxis(array.astype(np.float64), 0, -1)
    low, high = float(values.min()), float(values.max())
    values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    return values, Geometry.identity(array.shape[2], array.shape[1])


def _decode(file: Path) -> Any:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise LoadingError("reading images needs pillow: pip install 'innspect[vision]'") from error
    try:
        with warnings.catch_warnings():
            # Above this size PIL warns and, at twice it, refuses (a decompression bomb).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                opened.load()
                return opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise LoadingError(
            f"image {file} is too large to decode safely (over {Image.MAX_IMAGE_PIXELS} "
            "pixels); resize it first"
        ) from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise LoadingError(f"cannot decode image {file}: {first_line(error)}") from error


def _as_float_pixels(image: Any) -> np.ndarray:
    """(H, W) greyscale or (H, W, 3) colour pixels in [0, 1], keeping 16-bit precision."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale (PNG): PIL's convert("L") would keep only the top values.
        return np.asarray(image, dtype=np.float64) / 65535.0
    if mode == "F":
        return np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if mode in ("1", "L", "LA", "La", "P") and not _palette_has_colour(image):
        return np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def _palette_has_colour(image: Any) -> bool:
    if image.mode != "P":
        return False
    rgb = np.asarray(image.convert("RGB"))
    return not (
        np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    )


def _load_image(file: Path, preprocess: str) -> LoadedInput:
    from PIL import Image

    image = _decode(file)
    pixels = _as_float_pixels(image)  # (H, W) or (H, W, 3)
    colour = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=-1)
    height, width = pixels.shape[:2]
    if preprocess == "imagenet":
        scale = 256 / min(width, height)
        resized = (max(224, round(width * scale)), max(224, round(height * scale)))
        rgb = Image.fromarray((colour * 255).round().astype(np.uint8), mode="RGB")
        rgb = rgb.resize(resized, Image.Resampling.BILINEAR)
        left, top = (resized[0] - 224) // 2, (resized[1] - 224) // 2
        rgb = rgb.crop((left, top, left + 224, top + 224))
        values = torch.as_tensor(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        geometry = Geometry((width, height), resized, (left, top, 224, 224))
        return LoadedInput(file, (values - mean) / std, colour, geometry)
    tensor = torch.as_tensor(pixels, dtype=torch.float32)
    tensor = tensor[None] if pixels.ndim == 2 else tensor.permute(2, 0, 1).contiguous()
    return LoadedInput(file, tensor, colour, Geometry.identity(width, height))


def check_channels(model: nn.Module, sample: LoadedInput) -> None:
    """A clear message when a greyscale image meets a model whose first layer wants colour."""
    first = next((m for m in model.modules() if hasattr(m, "in_channels")), None)
    if first is None or sample.tensor.ndim != 3:
        return
    expected, given = int(first.in_channels), int(sample.tensor.shape[0])
    if expected != given and sample.path.suffix.lower() in IMAGE_SUFFIXES:
        kind = "greyscale (1 channel)" if given == 1 else f"{given} channels"
        raise LoadingError(
            f"image {sample.path} is {kind} but the model's first layer takes {expected} "
            f"channel{'s' if expected != 1 else ''}; "
            + (
                "convert the image to RGB or use --preprocess imagenet (which does)"
                if given == 1
                else "convert the image to greyscale"
            )
        )


# -- models ------------------------------------------------------------------------------------
def default_preprocess(spec: str) -> str:
    """The preprocessing a model source expects: ImageNet's for torchvision, else none."""
    return "imagenet" if spec.startswith("torchvision:") else "none"
