"""``innspect text``: a saved tiny model folder explained from the command line, its files, its
errors (exit status 2) and its hover page in a headless browser."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from innspect.cli.main import main
from innspect.text import explain_generation, load
from tests.test_text_generation import PROMPT, llama, tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama-cli")
    llama().save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def report(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text-report")
    status = main(
        [
            "text",
            "--model",
            str(folder),
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "3",
            "--method",
            "lrp.attn",
            "occlusion",
            "--out",
            str(out),
            "--report",
        ]
    )
    assert status == 0
    return out


def test_text_writes_results_figures_and_page(folder: Path, report: Path) -> None:
    results = json.loads((report / "results.json").read_text())
    assert results["prompt"] == PROMPT and set(results["methods"]) == {"lrp.attn", "occlusion"}
    attn = results["methods"]["lrp.attn"]
    # The same numbers as the library call on the same folder.
    model, tok = load(folder)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    expected = explain_generation(model, ids, max_new_tokens=3, method="lrp.attn")
    assert attn["generated_ids"] == expected.generated_ids.tolist()
    torch.testing.assert_close(torch.tensor(attn["matrix"]), expected.matrix)
    assert results["methods"]["occlusion"]["generated_ids"] == attn["generated_ids"]
    for name in ("matrix_lrp.attn.png", "matrix_occlusion.png", "index.html", "occlusion.html"):
        assert (report / name).stat().st_size > 500, name


def test_text_prints_plain_text_off_a_terminal(folder: Path, tmp_path: Path, capsys) -> None:
    status = main(
        ["text", "--model", str(folder), "--prompt", PROMPT, "--max-new-tokens", "2",
         "--method", "occlusion", "--out", str(tmp_path)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0 and "\x1b[" not in printed  # no colour codes into a pipe or file
    assert "== occlusion" in printed and printed.count("\n") >= 5
    assert not (tmp_path / "index.html").exists()


def test_text_contrast_explains_the_difference(folder: Path, tmp_path: Path) -> None:
    """--contrast TOKEN: each step explains its token's logit minus TOKEN's (occlusion is a
    difference of scores, so the matrix is that of the token minus that of TOKEN)."""
    tok = tokenizer()
    argv = ["text", "--model", str(folder), "--prompt", PROMPT, "--max-new-tokens", "2",
            "--method", "occlusion", "--out", str(tmp_path), "--contrast", "11"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "results.json").read_text())["methods"]["occlusion"]
    assert result["contrasts"] == [11, 11]
    model, _ = load(folder)
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    common = {"generated_ids": result["generated_ids"], "method": "occlusion"}
    plain = explain_generation(model, ids, **common).matrix
    other = explain_generation(model, ids, target=11, **common).matrix
    torch.testing.assert_close(torch.tensor(result["matrix"]), plain - other)


def test_text_explains_an_encoder_decoder_folder(tmp_path: Path, capsys) -> None:
    """A saved T5 folder: load reads it as a sequence-to-sequence model, the decoder's steps
    are explained against the source (the prompt) and the decoder's tokens, the terminal
    shows the source, "=>", the decoder's start token, then the generated text."""
    from tests.test_text_seq2seq import t5

    folder, out = tmp_path / "tiny-t5", tmp_path / "out"
    t5().save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    argv = ["text", "--model", str(folder), "--prompt", PROMPT, "--max-new-tokens", "2",
            "--method", "gradient", "occlusion", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert " => " in printed.splitlines()[1]
    results = json.loads((out / "results.json").read_text())["methods"]
    model, tok = load(folder)
    assert model.config.is_encoder_decoder and not model.training
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    for name in ("gradient", "occlusion"):
        expected = explain_generation(model, ids, max_new_tokens=2, method=name)
        assert results[name]["source_length"] == ids.shape[1]
        assert results[name]["prompt_length"] == ids.shape[1] + 1
        assert results[name]["generated_ids"] == expected.generated_ids.tolist()
        torch.testing.assert_close(torch.tensor(results[name]["matrix"]), expected.matrix)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "{missing}"], "no such folder"),
        (["--method", "lrp.zz"], "unknown method 'lrp.zz'"),
        (["--max-new-tokens", "0"], "max_new_tokens must be a positive integer"),
        (["--contrast", "the cat sat"], "give one token"),
    ],
)
def test_text_bad_input_exits_2(
    folder: Path, tmp_path: Path, capsys, arguments: list[str], message: str
) -> None:
    base = {"--model": str(folder), "--prompt": PROMPT, "--out": str(tmp_path)}
    given = dict(zip(arguments[::2], arguments[1::2], strict=True))
    given = {k: v.replace("{missing}", str(tmp_path / "nope")) for k, v in given.items()}
    argv = ["text"] + [x for k, v in {**base, **given}.items() for x in (k, v)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# After load, hover generated token 1 and record each token's background colour.
_HOVER = """<script>
window.addEventListener("load", () => {
  const target = document.querySelector('#text span[data-step="1"]');
  target.dispatchEvent(new MouseEvent("mouseenter"));
  const colours = [...document.querySelectorAll("#text span")].map(
    s => s.style.backgroundColor);
  document.documentElement.setAttribute("data-colours", JSON.stringify(colours));
});
</script>"""


def test_hovering_a_generated_token_shades_its_context(report: Path) -> None:
    from tests.browser import FLAGS, chromium

    page = report / "index.html"
    probe = report / "_hover.html"
    probe.write_text(page.read_text().replace("</body>", _HOVER + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    match = re.search(r'data-colours="([^"]*)"', run.stdout)
    assert match, f"the page did not run its script: {run.stderr[-1500:]}"
    colours = json.loads(match.group(1).replace("&quot;", '"'))
    results = json.loads((report / "results.json").read_text())["methods"]["lrp.attn"]
    prompt, row = results["prompt_length"], results["matrix"][1]
    assert len(colours) == len(row)
    for i, colour in enumerate(colours):
        if i >= prompt + 1 or row[i] == 0:  # step 1 reads tokens before position prompt + 1
            assert colour == "", (i, colour)
        else:
            # Red for evidence for the token, blue against (rgb() where fully opaque).
            red = "(200, 30, 30" in colour
            assert red == (row[i] > 0) and colour.startswith("rgb"), (i, colour)
