"""Shared fixtures: the peer reference data in ../shared/references and small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCES = Path(
    os.environ.get("INNSPECT_SHARED_REFERENCES", REPO_ROOT.parent / "shared" / "references")
)


def require_references(subdir: str) -> Path:
    """The reference folder; in CI (CI=true) its absence fails loudly instead of skipping."""
    return require_shared(SHARED_REFERENCES / subdir, "INNSPECT_SHARED_REFERENCES")


def require_shared(path: Path, variable: str) -> Path:
    """A folder of ../shared/ (or where ``variable`` points); in CI (CI=true) its absence
    fails loudly instead of skipping."""
    if not path.is_dir():
        message = (
            f"reference data {path} not found: CI must have ../shared/ beside the checkout "
            f"(or set {variable})"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _deterministic_seed() -> None:
    torch.manual_seed(0)
