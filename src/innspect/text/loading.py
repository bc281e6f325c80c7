"""A Hugging Face language model or text classifier and its tokenizer from a local folder
(nothing downloaded)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from innspect.errors import LoadingError
from innspect.util.extras import require


def load(path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from a folder written by ``save_pretrained``.

    The model is the folder's causal language model (``AutoModelForCausalLM``), its
    encoder-decoder model (``AutoModelForSeq2SeqLM``: T5, BART) when the config says
    ``is_encoder_decoder``, or its text classifier (``AutoModelForSequenceClassification``:
    BERT, RoBERTa...) when the config's ``architectures`` names a
    ``...ForSequenceClassification``, in eval mode; the tokenizer ``AutoTokenizer``'s (None
    when the folder has none). Only local files are read (``local_files_only=True``).

    Parameters
    ----------
    path
        The model folder (``config.json``, the weights, the tokenizer's files).
    dtype
        Load the weights in this dtype (default: as saved).
    """
    transformers = require("transformers", "innspect.text.load", "hf")
    folder = Path(path)
    if not folder.is_dir():
        raise LoadingError(f"{folder}: no such folder (give a Hugging Face model folder)")
    if not (folder / "config.json").is_file():
        raise LoadingError(
            f"{folder} is not a Hugging Face model folder (no config.json): save one with "
            "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)"
        )
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    kind = "causal language model"
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        auto = transformers.AutoModelForCausalLM
        if getattr(config, "is_encoder_decoder", False):
            auto, kind = transformers.AutoModelForSeq2SeqLM, "encoder-decoder model"
        elif any(
            names_text_classifier(str(name))
            for name in getattr(config, "architectures", None) or ()
        ):
            auto, kind = transformers.AutoModelForSequenceClassification, "text classifier"
        model = auto.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LoadingError(f"{folder}: cannot load a {kind}: {first}") from error
    tokenizer = None
    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise LoadingError(f"{folder}: cannot load its tokenizer: {first}") from error
    return model.eval(), tokenizer


# Files one of which a saved tokenizer writes.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def names_text_classifier(class_name: str) -> bool:
    """Whether a Hugging Face class name is a sequence classifier's (one score per class)."""
    return class_name.endswith("ForSequenceClassification")


def is_text_classifier(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face sequence classifier (one score per class)."""
    return names_text_classifier(type(model).__name__)
