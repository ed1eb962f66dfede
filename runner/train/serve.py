"""Talk to a trained run and measure it: `python -m runner.train.serve chat|eval --run-dir DIR ...`.

chat: the tuned model (the run's final model or --checkpoint STEP; a LoRA/QLoRA adapter on its base)
through the tokenizer's chat template, the same rendering training used (runner.train.data), answers
streamed. `--prompt TEXT` answers once and exits (scripts); `--compare` answers with the base model
too, side by side. Greedy decoding unless --temperature is set.

eval: held-out loss and perplexity on the run's evaluation split (rebuilt from the recipe with the
same seed, so it is the split training held out) or on --data FILE, and N sample generations beside
their references; written to RUN_DIR/eval.json and printed.

Started by the `ftui chat` / `ftui eval` commands by module name, like every runner.train entry point.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from runner.recipe.schema import load_recipe
from runner.rundir.runs import RunDir

from .export import ExportError, base_model, source_dir


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(recipe, src: Path):
    from transformers import AutoTokenizer

    from .data import ensure_chat_template

    where = src if (src / "tokenizer_config.json").is_file() else recipe.model.path
    tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True, revision=recipe.model.revision)
    ensure_chat_template(tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_models(run: RunDir, checkpoint: int | None, compare: bool):
    """(tuned model, base model or None, tokenizer), in eval mode on the best device."""
    import torch
    from transformers import AutoModelForCausalLM

    recipe = load_recipe(run.recipe)
    src = source_dir(run, checkpoint)
    dtype = torch.float32 if device().type == "cpu" else torch.bfloat16
    if recipe.tuner in ("lora", "qlora"):
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(base_model(recipe, dtype), str(src))
    else:
        tuned = AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype, local_files_only=True)
    base = base_model(recipe, dtype) if compare else None
    for m in (tuned, base):
        if m is not None:
            m.to(device()).eval()
    return tuned, base, load_tokenizer(recipe, src)


def generate(model, tok, turns: list[dict], max_new_tokens: int, temperature: float, stream: bool = False) -> str:
    import torch
    from transformers import TextStreamer

    text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False).to(device())
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    kwargs.update(do_sample=True, temperature=temperature) if temperature > 0 else kwargs.update(do_sample=False)
    if stream:
        kwargs["streamer"] = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def chat(args) -> int:
    run = RunDir(args.run_dir)
    tuned, base, tok = load_models(run, args.checkpoint, args.compare)
    if args.jsonl:  # for the app: one request per line in ({"messages": [...]}), one answer per line out
        print(json.dumps({"ready": True, "run": run.id}), flush=True)
        for line in sys.stdin:
            try:
                turns = json.loads(line)["messages"]
                answer = generate(tuned, tok, turns, args.max_new_tokens, args.temperature)
                print(json.dumps({"answer": answer}), flush=True)
            except (ValueError, KeyError, TypeError) as err:
                print(json.dumps({"error": f"bad request: {err}"}), flush=True)
        return 0
    if args.prompt is not None:
        turns = [{"role": "user", "content": args.prompt}]
        if base is not None:
            print(f"base:\n{generate(base, tok, turns, args.max_new_tokens, args.temperature)}\n")
            print(f"tuned:\n{generate(tuned, tok, turns, args.max_new_tokens, args.temperature)}")
        else:
            print(generate(tuned, tok, turns, args.max_new_tokens, args.temperature))
        return 0
    print(f"chatting with {run.id} ({'compare: base, then tuned' if base else 'tuned'}); /reset clears, ctrl-d leaves")
    history: list[dict] = []
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            history = []
            continue
        history.append({"role": "user", "content": line})
        if base is not None:
            print("base> ", end="", flush=True)
            generate(base, tok, history, args.max_new_tokens, args.temperature, stream=True)
        print("tuned> " if base is not None else "model> ", end="", flush=True)
        answer = generate(tuned, tok, history, args.max_new_tokens, args.temperature, stream=True)
        history.append({"role": "assistant", "content": answer})


def eval_rows(recipe, tok, data: Path | None):
    """(token rows to score, conversations for samples): the run's held-out split, or `data`."""
    from runner.data.records import eval_source, load_records, record_turns, resolve_format, resolve_path

    from .data import build_datasets

    section = recipe.dataset
    if data is not None:
        import dataclasses

        section = dataclasses.replace(section, path=str(data), eval_split=str(data))
    _, held, _ = build_datasets(section, tok, base_dir=recipe.base_dir(), seed=recipe.train.seed)
    if held is None:
        raise ExportError(
            "the run held no data out (dataset.eval_split 0): pass --data FILE with examples it did not train on"
        )
    source = eval_source(section, recipe.base_dir())
    if isinstance(source, Path):
        records = load_records(source)
        fmt = resolve_format(records, section.format, str(source))
    else:  # a fraction of the training file: the same records the split held out
        from .data import split_eval

        path = resolve_path(section.path, recipe.base_dir())
        records = load_records(path)
        fmt = resolve_format(records, section.format, str(path))
        _, records = split_eval(records, source, recipe.train.seed, str(path))
    convs = [record_turns(r, fmt, "evaluation record") for r in records] if fmt != "text" else []
    return held, convs


def evaluate(args) -> int:
    import torch

    run = RunDir(args.run_dir)
    recipe = load_recipe(run.recipe)
    tuned, _, tok = load_models(run, args.checkpoint, compare=False)
    held, convs = eval_rows(recipe, tok, args.data)
    total_loss, total_tokens = 0.0, 0
    with torch.no_grad():
        for row in held:
            ids = torch.tensor([row["input_ids"]], device=device())
            labels = torch.tensor([row["labels"]], device=device())
            n = int((labels[:, 1:] != -100).sum())
            if n == 0:
                continue
            loss = tuned(input_ids=ids, labels=labels).loss
            total_loss += float(loss) * n
            total_tokens += n
    mean = total_loss / max(total_tokens, 1)
    samples = []
    for turns in convs[: args.samples]:
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            continue
        prompt = turns[:-1]
        samples.append(
            {
                "prompt": prompt[-1]["content"],
                "reference": turns[-1]["content"],
                "generated": generate(tuned, tok, prompt, args.max_new_tokens, 0.0),
            }
        )
    result = {
        "run": run.id,
        "source": str(args.data) if args.data else "the run's evaluation split",
        "examples": len(held),
        "tokens": total_tokens,
        "loss": round(mean, 5),
        "perplexity": round(math.exp(min(mean, 50)), 3),
        "samples": samples,
        "time": time.time(),
    }
    (run.path / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.train.serve")
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("chat", "eval"):
        p = sub.add_parser(name)
        p.add_argument("--run-dir", required=True, type=Path)
        p.add_argument("--checkpoint", type=int, default=None)
        p.add_argument("--max-new-tokens", type=int, default=128)
        if name == "chat":
            p.add_argument("--prompt", default=None)
            p.add_argument("--compare", action="store_true")
            p.add_argument("--jsonl", action="store_true", help="requests and answers as JSON lines (the app)")
            p.add_argument("--temperature", type=float, default=0.0)
        else:
            p.add_argument("--data", type=Path, default=None)
            p.add_argument("--samples", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        return chat(args) if args.what == "chat" else evaluate(args)
    except (ExportError, OSError) as err:
        print(f"ftui: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a data problem names file and record (DataError); anything else, one line
        from runner.data.records import DataError

        if isinstance(err, DataError):
            print(f"ftui: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
