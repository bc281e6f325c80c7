"""``innspect text``: explain what a language model writes, token by token.

Loads a Hugging Face causal language model and its tokenizer from a local folder
(``innspect.text.load``), generates greedily from the prompt and explains every generated token
against its context with each method (``innspect.text.explain_generation``). Prints the text
with each generated token's context shaded (ANSI colours when stdout is a terminal), and writes
``results.json``, one matrix figure per method (``matrix_<method>.png``) and, with
``--report``, ``index.html`` (hover a generated token to shade its context). A text
classifier's folder (BERT-style ``...ForSequenceClassification``) has its predicted class
explained against the prompt's tokens instead (``innspect.text.explain_classification``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from innspect.cli.common import CLIError, quiet_unless_debug
from innspect.util.files import write_text

HELP = "explain what a language model writes: every generated token against its context"
DESCRIPTION = """\
Generate greedily from --prompt with the Hugging Face causal language model in --model (a
local folder written by save_pretrained: nothing is downloaded) and explain every generated
token's logit against all earlier tokens, at the token embeddings. An encoder-decoder model
(T5, BART) reads --prompt as its source; each decoder step is explained against the source's
tokens and the decoder's earlier tokens (printed: source => start token|generated text).

Prints the generated text, then each generated token with its context shaded (red: evidence
for the token, blue: against; colours only on a terminal). Writes to --out: results.json
(tokens, scores, the matrix per method), matrix_<method>.png and, with --report, index.html
(hover a generated token to shade its context). --contrast TOKEN explains "the generated
token rather than TOKEN" (the difference of the two logits).

A text classifier (a folder of a BERT-style ...ForSequenceClassification) generates nothing:
its predicted class is explained against the tokens of --prompt (--contrast CLASS: the class
rather than CLASS, a name of config.id2label or an index), the same files written.

methods: gradient, input_t_gradient, integrated_gradients, lrp.epsilon, lrp.attn (AttnLRP,
default), lrp.cp, occlusion (each token replaced by the pad token)

examples:
  innspect text --model ./tiny-llama --prompt "The cat sat on" --max-new-tokens 8 --report
  innspect text --model ./gpt2 --prompt "Paris is the capital of" --method lrp.attn \\
      input_t_gradient --contrast " Germany"
"""
OUT_DEFAULT = "innspect-text"


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``innspect text``."""
    parser.add_argument("--model", required=True, metavar="DIR", help="Hugging Face model folder")
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="the prompt")
    parser.add_argument(
        "--max-new-tokens", type=int, default=16, metavar="N", help="tokens to generate (16)"
    )
    parser.add_argument(
        "--method", nargs="+", default=["lrp.attn"], metavar="NAME", help="methods (lrp.attn)"
    )
    parser.add_argument(
        "--contrast",
        metavar="TOKEN",
        help="explain each generated token rather than this one (a token's text or id)",
    )
    parser.add_argument("--batch-size", type=int, default=16, metavar="N", help="steps per walk")
    parser.add_argument("--out", default=OUT_DEFAULT, metavar="DIR", help="output folder")
    parser.add_argument("--report", action="store_true", help="also write index.html")


def run(args: argparse.Namespace) -> int:
    """Generate, explain and write the results."""
    return quiet_unless_debug(_run, args)


def _run(args: argparse.Namespace) -> int:
    # Imported when the subcommand runs: transformers and matplotlib are slow to import.
    from innspect.text import METHODS, explain_generation, load
    from innspect.text.loading import is_text_classifier

    for name in args.method:
        if name not in METHODS:
            raise CLIError(f"unknown method '{name}' for text; one of {', '.join(METHODS)}")
    if not args.prompt:
        raise CLIError("--prompt is empty: give the text to continue")
    model, tokenizer = load(args.model)
    if tokenizer is None:
        raise CLIError(f"{args.model} has no tokenizer: save it there (tokenizer.save_pretrained)")
    ids = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CLIError(f"cannot create the output folder {out}: {error.strerror}") from error
    if is_text_classifier(model):
        return _classify(args, model, tokenizer, ids, out)
    contrast = None if args.contrast is None else _token_id(tokenizer, args.contrast)
    results: dict[str, Any] = {}
    generated = None
    colour = sys.stdout.isatty()
    for name in args.method:
        result = explain_generation(
            model,
            ids,
            max_new_tokens=None if generated is not None else args.max_new_tokens,
            generated_ids=generated,
            method=name,
            contrast=contrast,
            tokenizer=tokenizer,
            batch_size=args.batch_size,
        )
        generated = result.generated_ids  # every method explains the same continuation
        title = f"innspect: what {Path(args.model).name} wrote"
        results[name] = _show_and_save(result, name, args, out, title, colour)
    summary = {
        "model": str(args.model),
        "prompt": args.prompt,
        "generated_text": tokenizer.decode(generated.tolist()) if generated is not None else "",
        "methods": results,
    }
    write_text(out / "results.json", json.dumps(summary, indent=1))
    print(f"wrote {out}/results.json" + (" and index.html" if args.report else ""))
    return 0


def _classify(args: argparse.Namespace, model: Any, tokenizer: Any, ids: Any, out: Path) -> int:
    """A text classifier: its predicted class explained against the prompt's tokens."""
    from innspect.text import explain_classification
    from innspect.text.classification import class_names

    names = class_names(model, model.config.num_labels)
    contrast = None if args.contrast is None else _class_index(names, args.contrast)
    results: dict[str, Any] = {}
    colour = sys.stdout.isatty()
    for name in args.method:
        result = explain_classification(
            model,
            ids,
            method=name,
            contrast=contrast,
            tokenizer=tokenizer,
            skip_tokens=list(tokenizer.all_special_ids),
            batch_size=args.batch_size,
        )
        title = f"innspect: why {Path(args.model).name} chose its class"
        results[name] = _show_and_save(result, name, args, out, title, colour)
    first = results[args.method[0]]
    summary = {
        "model": str(args.model),
        "prompt": args.prompt,
        "predicted_class": first["class_names"][first["classes"][0]],
        "methods": results,
    }
    write_text(out / "results.json", json.dumps(summary, indent=1))
    print(f"wrote {out}/results.json" + (" and index.html" if args.report else ""))
    return 0


def _show_and_save(
    result: Any, name: str, args: argparse.Namespace, out: Path, title: str, colour: bool
) -> dict[str, Any]:
    """Print one method's result, write its figure (and page with ``--report``); its values
    for results.json."""
    from innspect.viz.files import save_figure  # matplotlib: imported when the command runs

    print(f"== {name}")
    print(result.to_terminal(colour=colour))
    save_figure(result.plot(), out / f"matrix_{name}.png")
    if args.report:
        page = result.to_html(title=title)
        write_text(out / ("index.html" if name == args.method[0] else f"{name}.html"), page)
    return result.to_dict()


def _class_index(names: list[str], text: str) -> int:
    """A class given by its name (``config.id2label``) or its index."""
    if text in names:
        return names.index(text)
    if text.isdigit() and int(text) < len(names):
        return int(text)
    raise CLIError(f"--contrast {text!r} is not a class of this model; one of {', '.join(names)}")


def _token_id(tokenizer: Any, text: str) -> int:
    """A token given as its id or its text (one token of the tokenizer)."""
    if text.isdigit():
        return int(text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise CLIError(
            f"--contrast {text!r} is {len(ids)} tokens for this tokenizer; give one token "
            "(its text or its id)"
        )
    return int(ids[0])
