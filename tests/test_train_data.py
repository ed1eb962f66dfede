"""The data pipeline (runner.data, and runner.train.data in the training process) with the shipped
tiny tokenizer: loaders, formats, answer-only labels, overlong samples, packing, evaluation splits,
the collator, the dry-run check."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from runner.data.check import check_dataset  # noqa: E402
from runner.data.records import DataError, detect_format, load_records, resolve_format  # noqa: E402
from runner.recipe.schema import DatasetSection  # noqa: E402
from runner.train.data import (  # noqa: E402
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    build_datasets,
    encode_chats,
    make_collator,
    pack,
)

TINY = Path(__file__).resolve().parent.parent / "recipes" / "tiny"

CHAT = [
    {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "5"},
            {"role": "user", "content": "Spell the word backwards.\n\napple"},
            {"role": "assistant", "content": "elppa"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "What colour is a zorbel?"},
            {"role": "assistant", "content": "A zorbel is teal."},
        ]
    },
]
ALPACA = [
    {"instruction": "What is 4 + 4?", "input": "", "output": "8"},
    {"instruction": "Spell the word backwards.", "input": "garden", "output": "nedrag"},
]


@pytest.fixture(scope="module")
def tok():
    return transformers.AutoTokenizer.from_pretrained(str(TINY / "model"))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def section(path: Path, **kw) -> DatasetSection:
    return DatasetSection(path=str(path), **{"max_seq_len": 128, **kw})


def answer_runs(tok, ids: list[int], labels: list[int]) -> list[str]:
    """Decoded runs of consecutive trained tokens (one per assistant answer)."""
    runs, current = [], []
    for tid, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == tid, "a label must be the token at its own position"
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    return [tok.decode(r) for r in runs + ([current] if current else [])]


def build(tok, path: Path, seed: int = 0, **kw):
    return build_datasets(section(path, **kw), tok, base_dir=path.parent, seed=seed)


# --- shipped assets ------------------------------------------------------------------------


def test_shipped_tiny_assets_load_offline(tok):
    config = transformers.AutoConfig.from_pretrained(str(TINY / "model"))
    assert config.vocab_size == len(tok)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert len(load_records(TINY / "data" / "instructions.jsonl")) >= 300
    chats = load_records(TINY / "data" / "chat.jsonl")
    assert sum(len(c["messages"]) > 3 for c in chats) >= 10  # some multi-turn conversations


# --- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, fmt",
    [
        (ALPACA[0], "alpaca"),
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}, "sharegpt"),
        (CHAT[0], "messages"),
        ({"text": "Once upon a time."}, "text"),
    ],
)
def test_detect_format(record, fmt):
    assert detect_format([record]) == fmt


def test_unknown_columns_are_named_with_the_expected_formats():
    with pytest.raises(DataError) as err:
        detect_format([{"question": "q", "answer": "a"}], "data.jsonl")
    message = str(err.value)
    assert "data.jsonl" in message and "question, answer" in message
    assert all(fmt in message for fmt in ("alpaca", "sharegpt", "messages", "text"))


def test_explicit_format_names_missing_columns_and_record():
    records = [ALPACA[0], {"instruction": "x", "input": ""}]
    with pytest.raises(DataError, match=r"d\.jsonl: record 2 has no output column.*instruction, input"):
        resolve_format(records, "alpaca", "d.jsonl")
    with pytest.raises(DataError, match="record 1 has no messages column"):
        resolve_format(records, "messages", "d.jsonl")


def test_unknown_role_is_an_error_naming_the_record(tmp_path, tok):
    bad = {"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [bad])
    with pytest.raises(DataError, match=r"record 1: turn role 'robot' is unknown"):
        build(tok, path)


# --- loaders -------------------------------------------------------------------------------


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path.name}:3: not valid JSON"):
        load_records(path)


def test_json_list_and_object_holding_a_list(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ALPACA), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"version": 1, "data": ALPACA}), encoding="utf-8")
    assert load_records(tmp_path / "a.json") == ALPACA == load_records(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('[{"text": 1},\n  {oops}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"c\.json:2: not valid JSON"):
        load_records(tmp_path / "c.json")


def test_csv_and_tsv(tmp_path):
    (tmp_path / "d.csv").write_text('instruction,input,output\n"What is 1 + 1?",,2\n', encoding="utf-8")
    (tmp_path / "d.tsv").write_text("text\nhello world\n", encoding="utf-8")
    assert load_records(tmp_path / "d.csv") == [{"instruction": "What is 1 + 1?", "input": "", "output": "2"}]
    assert load_records(tmp_path / "d.tsv") == [{"text": "hello world"}]


def test_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(CHAT), str(tmp_path / "d.parquet"))
    assert load_records(tmp_path / "d.parquet") == CHAT


def test_saved_dataset_and_dataset_dict(tmp_path):
    import datasets

    datasets.Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ALPACA), "test": datasets.Dataset.from_list(ALPACA[:1])}
    ).save_to_disk(str(tmp_path / "dd"))
    assert load_records(tmp_path / "ds") == ALPACA
    assert load_records(tmp_path / "dd") == ALPACA
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one saved with datasets"):
        load_records(tmp_path / "plain")


def test_missing_empty_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_records(tmp_path / "e.jsonl")
    (tmp_path / "d.xlsx").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"cannot read \.xlsx; use \.jsonl"):
        load_records(tmp_path / "d.xlsx")


# --- labels --------------------------------------------------------------------------------


def test_only_answers_are_trained_in_multi_turn_chat(tmp_path, tok):
    train, _, stats = build(tok, write_jsonl(tmp_path / "chat.jsonl", CHAT))
    assert stats.format == "messages" and stats.kept == 2
    row = train[0]
    assert answer_runs(tok, row["input_ids"], row["labels"]) == ["5</s>", "elppa</s>"]
    assert "Answer briefly." in tok.decode(row["input_ids"])  # the prompt is there, just not trained
    assert answer_runs(tok, train[1]["input_ids"], train[1]["labels"]) == ["A zorbel is teal.</s>"]


def test_alpaca_and_sharegpt_train_the_answer(tmp_path, tok):
    train, _, _ = build(tok, write_jsonl(tmp_path / "a.jsonl", ALPACA))
    assert [answer_runs(tok, r["input_ids"], r["labels"]) for r in train] == [["8</s>"], ["nedrag</s>"]]
    assert "garden" in tok.decode(train[1]["input_ids"])
    share = {
        "conversations": [
            {"from": "system", "value": "Be kind."},
            {"from": "human", "value": "Hi?"},
            {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "2 + 2?"},
            {"from": "gpt", "value": "4"},
        ]
    }
    train, _, _ = build(tok, write_jsonl(tmp_path / "s.jsonl", [share]))
    assert answer_runs(tok, train[0]["input_ids"], train[0]["labels"]) == ["Hello.</s>", "4</s>"]


def test_text_format_trains_every_token(tmp_path, tok):
    train, _, stats = build(tok, write_jsonl(tmp_path / "t.jsonl", [{"text": "The tunnel is quiet."}]))
    row = train[0]
    assert row["labels"] == row["input_ids"]
    assert tok.decode(row["input_ids"]) == "<s>The tunnel is quiet.</s>"
    assert stats.train_tokens == len(row["input_ids"])


def test_fallback_template_when_the_tokenizer_has_none(tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(str(TINY / "model"))
    tok.chat_template = None
    train, _, _ = build(tok, write_jsonl(tmp_path / "chat.jsonl", CHAT[:1]))
    assert tok.chat_template == FALLBACK_CHAT_TEMPLATE  # saved with the model, generation uses it too
    assert "### User:" in tok.decode(train[0]["input_ids"])
    assert answer_runs(tok, train[0]["input_ids"], train[0]["labels"]) == ["5</s>", "elppa</s>"]


TEMPLATES = {
    # ChatML with a default system prompt; the end-of-turn marker is the EOS token.
    "chatml": (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nBe helpful.<|im_end|>\\n' }}{% endif %}"
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Adds text after the whole conversation only: renderings through an answer are no prefixes of it.
    "end-marker": (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% else %}{{ 'END' }}{% endif %}"
    ),
    # An empty reasoning block only on answers after the last user turn (as some reasoning models do).
    "think-after-last-user": (
        "{% set ns = namespace(last=0) %}{% for m in messages %}{% if m['role'] == 'user' %}"
        "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}{% for m in messages %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['role'] == 'assistant' and loop.index0 > ns.last %}"
        "{{ '<think></think>\\n' }}{% endif %}{{ m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_other_chat_templates_train_exactly_the_answers(name):
    tok = transformers.AutoTokenizer.from_pretrained(str(TINY / "model"))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]})
    tok.eos_token, tok.chat_template = "<|im_end|>", TEMPLATES[name]
    turns = [{"role": t["role"], "content": t["content"]} for t in CHAT[0]["messages"][1:]]
    [(ids, labels)] = encode_chats([turns], tok)
    assert answer_runs(tok, ids, labels) == ["5<|im_end|>", "elppa<|im_end|>"]


def test_tokenizer_without_offsets_tokenizes_by_piece(tok):
    class NoOffsets:
        is_fast = False

        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, *args, **kw):
            assert "return_offsets_mapping" not in kw
            return tok(*args, **kw)

    turns = CHAT[0]["messages"]
    [(ids, labels)] = encode_chats([turns], NoOffsets())
    assert answer_runs(tok, ids, labels) == ["5</s>", "elppa</s>"]


# --- empty and overlong samples ------------------------------------------------------------


def test_empty_rows_are_counted_and_skipped(tmp_path, tok):
    rows = ALPACA + [
        {"instruction": "Say nothing.", "input": "", "output": "  "},
        {"messages": []},
        {"messages": [{"role": "user", "content": "no answer"}]},
    ]
    rows[3] = {"instruction": "", "input": "", "output": "orphan answer"}
    rows[4] = {"instruction": "Only a question", "output": None}
    _, _, stats = build(tok, write_jsonl(tmp_path / "d.jsonl", rows), format="alpaca")
    assert (stats.samples, stats.kept, stats.empty) == (5, 2, 3)
    chats = [CHAT[1], {"messages": []}, {"messages": [{"role": "user", "content": "no answer"}]}]
    _, _, stats = build(tok, write_jsonl(tmp_path / "c.jsonl", chats))
    assert (stats.kept, stats.empty) == (1, 2)


def long_text_rows() -> list[dict]:
    return [{"text": "short"}, {"text": " ".join(["tiger"] * 100)}, {"text": "also short"}]


def test_overlong_samples_truncate_or_drop(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", long_text_rows())
    train, _, stats = build(tok, path, max_seq_len=16, overlong="truncate")
    assert (stats.kept, stats.truncated, stats.dropped) == (3, 1, 0)
    assert max(len(r["input_ids"]) for r in train) == 16
    train, _, stats = build(tok, path, max_seq_len=16, overlong="drop")
    assert (stats.kept, stats.truncated, stats.dropped) == (2, 0, 1)
    assert len(train) == 2


def test_truncation_that_cuts_off_the_whole_answer_drops_the_sample(tmp_path, tok):
    long_prompt = {"instruction": " ".join(["ocean"] * 60), "input": "", "output": "ok"}
    _, _, stats = build(tok, write_jsonl(tmp_path / "d.jsonl", [long_prompt, ALPACA[0]]), max_seq_len=16)
    assert (stats.kept, stats.truncated, stats.dropped) == (1, 0, 1)


# --- packing -------------------------------------------------------------------------------


def test_packing_keeps_every_label_aligned(tmp_path, tok):
    path = TINY / "data" / "chat.jsonl"
    plain, _, stats = build(tok, path, seed=3, max_seq_len=96)
    packed, _, packed_stats = build(tok, path, seed=3, max_seq_len=96, packing=True)
    assert len(packed) < len(plain) and packed_stats.train_tokens == stats.train_tokens
    by_ids = {tuple(r["input_ids"]): r["labels"] for r in plain}
    pieces = 0
    for row in packed:
        assert len(row["input_ids"]) <= 96 and row["position_ids"][0] == 0
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        for a, b in pairwise(starts):
            assert row["position_ids"][a:b] == list(range(b - a))
            labels = by_ids[tuple(row["input_ids"][a:b])]  # every piece is one whole sample
            assert row["labels"][a:b] == [IGNORE_INDEX] + labels[1:]
            pieces += 1
    assert pieces == len(plain)


def test_pack_starts_a_new_row_when_the_next_sample_does_not_fit():
    rows = [{"input_ids": [i] * n, "attention_mask": [1] * n, "labels": [i] * n} for i, n in enumerate((5, 4, 3, 8))]
    packed = pack(rows, 9)
    assert [len(r["input_ids"]) for r in packed] == [9, 3, 8]
    assert packed[0]["labels"] == [IGNORE_INDEX, 0, 0, 0, 0, IGNORE_INDEX, 1, 1, 1]
    assert packed[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2, 3]


# --- evaluation split ----------------------------------------------------------------------


def test_eval_fraction_is_deterministic_and_disjoint(tmp_path, tok):
    rows = [{"text": f"sample number {i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    train, evals, stats = build(tok, path, seed=7, eval_split=0.25)
    again, evals_again, _ = build(tok, path, seed=7, eval_split=0.25)
    assert (len(train), len(evals), stats.eval_samples, stats.samples) == (30, 10, 10, 40)
    assert evals["input_ids"] == evals_again["input_ids"] and train["input_ids"] == again["input_ids"]
    assert not {tuple(x) for x in train["input_ids"]} & {tuple(x) for x in evals["input_ids"]}
    _, other, _ = build(tok, path, seed=8, eval_split=0.25)
    assert other["input_ids"] != evals["input_ids"]


def test_eval_file_relative_to_base_dir(tmp_path, tok):
    write_jsonl(tmp_path / "train.jsonl", ALPACA)
    write_jsonl(tmp_path / "eval.jsonl", CHAT)  # its own format, detected on its own
    sec = DatasetSection(path="train.jsonl", eval_split="eval.jsonl", max_seq_len=128)
    train, evals, stats = build_datasets(sec, tok, base_dir=tmp_path, seed=0)
    assert (len(train), len(evals), stats.samples, stats.eval_samples) == (2, 2, 4, 2)
    assert answer_runs(tok, evals[1]["input_ids"], evals[1]["labels"]) == ["A zorbel is teal.</s>"]
    _, none, _ = build_datasets(DatasetSection(path="train.jsonl", max_seq_len=128), tok, base_dir=tmp_path, seed=0)
    assert none is None


def test_eval_fraction_too_large_is_an_error(tmp_path, tok):
    with pytest.raises(DataError, match="leaves nothing to train on"):
        build(tok, write_jsonl(tmp_path / "d.jsonl", ALPACA), eval_split=0.9)


def test_unresolved_max_seq_len_is_an_error(tmp_path, tok):
    with pytest.raises(DataError, match="max_seq_len is 'auto'"):
        build(tok, write_jsonl(tmp_path / "d.jsonl", ALPACA), max_seq_len="auto")


# --- collator ------------------------------------------------------------------------------


def test_collator_pads_each_column():
    import torch

    class Tok:
        pad_token_id = 3

    batch = make_collator(Tok())(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "position_ids": [0, 1, 0]},
            {"input_ids": [8], "attention_mask": [1], "labels": [8], "position_ids": [0]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 0], [0, 0, 0]]
    assert batch["input_ids"].dtype == torch.long
    wide = make_collator(Tok(), pad_to_multiple_of=8)([{"input_ids": [1], "attention_mask": [1], "labels": [1]}])
    assert wide["input_ids"].shape == (1, 8) and set(wide) == {"input_ids", "attention_mask", "labels"}


def test_collator_feeds_a_trainer_batch(tmp_path, tok):
    train, _, _ = build(tok, TINY / "data" / "instructions.jsonl", max_seq_len=64)
    batch = make_collator(tok)([train[i] for i in range(4)])
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(str(TINY / "model")))
    loss = model(**batch).loss
    assert loss.item() > 0 and loss.requires_grad


# --- dry-run check -------------------------------------------------------------------------


def test_check_dataset_reports_format_count_and_lengths(tmp_path):
    report = check_dataset(DatasetSection(path="data/chat.jsonl", eval_split=0.1, max_seq_len=512), TINY)
    assert report["format"] == "messages" and report["records"] == 100 and report["eval_records"] == 10
    assert 0 < report["approx_tokens"]["p50"] <= report["approx_tokens"]["max"] < 512
    assert report["approx_overlong"] == 0


def test_check_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        check_dataset(DatasetSection(path="missing.jsonl"), tmp_path)
    write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="question, answer"):
        check_dataset(DatasetSection(path="q.jsonl"), tmp_path)
    write_jsonl(tmp_path / "ok.jsonl", ALPACA)
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        check_dataset(DatasetSection(path="ok.jsonl", eval_split="nope.jsonl"), tmp_path)
    with pytest.raises(DataError, match="dataset.path is empty"):
        check_dataset(DatasetSection(), tmp_path)
