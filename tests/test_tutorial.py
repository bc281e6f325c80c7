"""docs/tutorial.md: its code blocks run, in order, in one namespace (and so stay true)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO_ROOT

TUTORIAL = REPO_ROOT / "docs" / "tutorial.md"


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


@pytest.mark.slow
def test_tutorial_code_blocks_run(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("INNSPECT_TUTORIAL_OUT", str(tmp_path))
    text = TUTORIAL.read_text(encoding="utf-8")
    blocks = code_blocks(text)
    assert len(blocks) >= 8
    namespace: dict = {"__name__": "tutorial"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{TUTORIAL.name} block {index + 1}", "exec"), namespace)  # noqa: S102
    # Every figure the page shows is written by its code, and is in the repository.
    for image in re.findall(r"\]\(images/(tutorial_[a-z_]+\.png)\)", text):
        assert (tmp_path / image).stat().st_size > 1000, image
        assert (TUTORIAL.parent / "images" / image).is_file(), image
    assert "oracle vs innspect: max difference" in capsys.readouterr().out
