"""Token-length statistics of data set files, estimated without a tokenizer."""

import json

import pytest

from planner.dataset_stats import DatasetError, dataset_stats, estimate_tokens


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_ascii_text_is_about_four_characters_per_token():
    assert estimate_tokens("a" * 400) == 100
    assert estimate_tokens("abcd" * 3 + "x") == 4  # 13 chars -> ceil(3.25)
    assert estimate_tokens("") == 0


def test_cjk_text_is_about_one_and_a_half_characters_per_token():
    assert estimate_tokens("中" * 300) == 200
    # The same number of characters costs far more tokens in CJK than in ASCII.
    assert estimate_tokens("你好世界" * 100) > 2.5 * estimate_tokens("abcd" * 100)


def test_mixed_text_adds_both_rates():
    assert estimate_tokens("a" * 40 + "中" * 15) == 10 + 10


def test_percentiles_over_known_lengths(tmp_path):
    # Samples of 1..100 tokens (4 ASCII characters per token).
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "abcd" * n} for n in range(100, 0, -1)])
    stats = dataset_stats(path)
    assert stats.samples == 100
    assert stats.total_tokens == sum(range(1, 101))
    assert stats.mean == pytest.approx(50.5)
    assert stats.max == 100
    assert 50 <= stats.p50 <= 51
    assert 95 <= stats.p95 <= 96
    assert 99 <= stats.p99 <= 100
    assert stats.p50 <= stats.p95 <= stats.p99 <= stats.max


def test_nested_chat_records_count_every_string(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "a" * 396}, {"role": "assistant", "content": "b" * 396}]}]
    stats = dataset_stats(write_jsonl(tmp_path / "chat.jsonl", rows))
    # "user" + "a"*396 + "assistant" + "b"*396 joined with 3 newlines
    assert stats.max == estimate_tokens("\n".join(["user", "a" * 396, "assistant", "b" * 396]))
    assert 195 < stats.max < 215


def test_suggested_seq_len_rounds_p99_up_to_256_and_caps(tmp_path):
    stats = dataset_stats(write_jsonl(tmp_path / "d.jsonl", [{"text": "a" * 4 * 700}] * 10))
    assert stats.p99 == 700
    assert stats.suggested_seq_len(4096) == 768
    assert stats.suggested_seq_len(512) == 512
    short = dataset_stats(write_jsonl(tmp_path / "s.jsonl", [{"text": "hi"}]))
    assert short.suggested_seq_len(4096) == 256


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "abcd"}\n\n   \n{"text": "abcdabcd"}\n')
    assert dataset_stats(path).samples == 2


@pytest.mark.parametrize(
    "suffix,content,samples",
    [
        (".json", json.dumps([{"text": "abcd"}, {"text": "abcdabcd"}]), 2),
        (".json", json.dumps({"train": [{"text": "abcd"}, {"text": "ab"}, {"text": "a"}]}), 3),
        (".csv", "instruction,output\nabcd,efgh\nab,cd\n", 2),
        (".tsv", "instruction\toutput\nabcd\tefgh\n", 1),
        (".txt", "one line\n\nanother line\n", 2),
    ],
)
def test_other_formats(tmp_path, suffix, content, samples):
    path = tmp_path / f"data{suffix}"
    path.write_text(content, encoding="utf-8")
    assert dataset_stats(path).samples == samples


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "also ok"}\n{"text": oops}\n')
    with pytest.raises(DatasetError) as err:
        dataset_stats(path)
    assert f"{path}:3:" in str(err.value)
    assert "not valid JSON" in str(err.value)


def test_unsupported_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DatasetError) as err:
        dataset_stats(path)
    message = str(err.value)
    assert str(path) in message and ".parquet" in message
    assert ".jsonl" in message and ".csv" in message


def test_empty_file_says_no_samples(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DatasetError, match="no samples"):
        dataset_stats(path)


def test_records_without_text_count_as_empty(tmp_path):
    with pytest.raises(DatasetError, match="no samples"):
        dataset_stats(write_jsonl(tmp_path / "numbers.jsonl", [{"id": 1}, {"id": 2}]))


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        dataset_stats(tmp_path / "absent.jsonl")


def test_non_utf8_file_is_a_dataset_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        dataset_stats(path)


def test_json_file_with_a_scalar_top_level_is_a_dataset_error(tmp_path):
    path = tmp_path / "scalar.json"
    path.write_text("42\n")
    with pytest.raises(DatasetError, match=str(path)):
        dataset_stats(path)
