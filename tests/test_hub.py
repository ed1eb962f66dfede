"""`--model org/name` for any Hub id: only config.json is fetched (from a stand-in hub on 127.0.0.1, never the
network), stored in the standard HF cache, and every failure is one line that says what to do."""

import json

import pytest

from planner.catalog import UnknownModel, load_config, resolve_model
from tui.cli import main

from hub_support import (
    COMMIT,
    GOOD_TOKEN,
    MAMBA_CFG,
    OTHER_TOKEN,
    QWEN_CFG,
    QWEN_PARAMS,
    Repo,
    closed_port_url,
    constants,
)


def plan_json(capsys, model: str) -> dict:
    capsys.readouterr()
    rc = main(["plan", "--model", model, "--gpus", "1", "--gpu", "a100-80g", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def cli_error(capsys, model: str) -> str:
    """The one-line error `ftui plan --model MODEL` prints (exit 2, no traceback, nothing on stdout)."""
    capsys.readouterr()
    rc = main(["plan", "--model", model, "--gpus", "1", "--gpu", "a100-80g", "--json"])
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ftui: error: --model: "), err
    assert "Traceback" not in err
    return lines[0]


# --- fetched once, then from the cache ----------------------------------------------------------------


def test_a_hub_id_not_in_the_catalog_is_fetched_and_planned(hub, hf_home, tmp_path, capsys):
    hub.add("acme/qwen-clone", QWEN_CFG)
    out = plan_json(capsys, "acme/qwen-clone")
    assert out["model"]["name"] == "acme/qwen-clone"
    assert out["model"]["hf_id"] == "acme/qwen-clone"
    assert out["model"]["source"] == "Hugging Face Hub (acme/qwen-clone)"
    assert out["model"]["params"] == QWEN_PARAMS
    assert out["recommendation"] is not None

    seen = hub.seen()
    assert {r.path for r in seen} == {"/acme/qwen-clone/resolve/main/config.json"}  # config.json and nothing else
    assert [r.method for r in seen if r.method == "GET"] == ["GET"]
    assert {r.method for r in seen} == {"HEAD", "GET"}
    assert all("authorization" not in r.headers for r in seen)  # no token set, none sent

    # Stored the standard way, where transformers looks: refs/main -> snapshot of the hub's commit.
    repo_dir = hf_home / "models--acme--qwen-clone"
    assert (repo_dir / "refs" / "main").read_text() == COMMIT
    assert json.loads((repo_dir / "snapshots" / COMMIT / "config.json").read_text()) == QWEN_CFG
    from huggingface_hub import try_to_load_from_cache

    assert try_to_load_from_cache("acme/qwen-clone", "config.json", cache_dir=str(hf_home)) == str(
        repo_dir / "snapshots" / COMMIT / "config.json"
    )
    assert not (tmp_path / "wrong-cache").exists()


def test_the_second_call_is_served_from_the_cache_without_the_hub(hub, capsys):
    hub.add("acme/qwen-clone", QWEN_CFG)
    first = resolve_model("acme/qwen-clone")
    assert first.source == "Hugging Face Hub (acme/qwen-clone)"
    count = len(hub.seen())
    assert count >= 2
    hub.stop()  # nothing listens on the endpoint any more
    again = resolve_model("acme/qwen-clone")
    assert again.source == "local HF cache (acme/qwen-clone)"
    assert again.name == "acme/qwen-clone" and again.arch.params == first.arch.params == QWEN_PARAMS
    assert plan_json(capsys, "acme/qwen-clone")["model"]["params"] == QWEN_PARAMS
    assert len(hub.seen()) == count


def test_hf_token_is_sent_and_opens_a_gated_repo(hub, monkeypatch):
    hub.add("meta-llama/Gated-8B", QWEN_CFG, gated=True)
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    entry = resolve_model("meta-llama/Gated-8B")
    assert entry.arch.params == QWEN_PARAMS
    seen = hub.seen()
    assert seen and all(r.headers.get("authorization") == f"Bearer {GOOD_TOKEN}" for r in seen)


def test_a_renamed_repo_follows_the_hubs_redirect(hub, hf_home):
    hub.add("acme/old-name", moved_to="acme/new-name")
    hub.add("acme/new-name", MAMBA_CFG)
    config, source = load_config("acme/old-name")
    assert config == MAMBA_CFG and source == "Hugging Face Hub (acme/old-name)"
    assert [r.path for r in hub.seen() if r.method == "GET"] == ["/acme/new-name/resolve/main/config.json"]
    assert (hf_home / "models--acme--old-name" / "snapshots" / COMMIT / "config.json").is_file()


# --- one line for each failure ------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_with_nothing_cached_says_to_unset_it_and_sends_nothing(hub, hf_home, monkeypatch, capsys, flag):
    hub.add("acme/qwen-clone", QWEN_CFG)
    monkeypatch.setenv(flag, "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what huggingface_hub makes of either at import
    message = cli_error(capsys, "acme/qwen-clone")
    assert f"acme/qwen-clone is not in the local Hugging Face cache ({hf_home})" in message
    assert f"{flag} is set: unset {flag} to download its config.json once" in message
    assert "local model directory" in message
    assert hub.seen() == []


def test_offline_still_finds_what_an_online_call_cached(hub, monkeypatch):
    hub.add("acme/qwen-clone", QWEN_CFG)
    resolve_model("acme/qwen-clone")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    count = len(hub.seen())
    assert resolve_model("acme/qwen-clone").arch.params == QWEN_PARAMS
    assert len(hub.seen()) == count


@pytest.mark.parametrize("token", [None, OTHER_TOKEN], ids=["anonymous-401", "not-granted-403"])
def test_a_gated_repo_says_accept_the_licence_and_set_a_token(hub, monkeypatch, capsys, token):
    hub.add("meta-llama/Gated-8B", QWEN_CFG, gated=True)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    message = cli_error(capsys, "meta-llama/Gated-8B")
    assert "meta-llama/Gated-8B is a gated model" in message and "licence" in message
    assert f"{hub.url}/meta-llama/Gated-8B" in message  # the model page
    assert "HF_TOKEN" in message and "hf auth login" in message
    assert [r.method for r in hub.seen()] == ["HEAD"]  # no download tried


@pytest.mark.parametrize("token", [None, GOOD_TOKEN], ids=["anonymous-401", "authenticated-404"])
def test_a_missing_or_private_repo_says_check_the_id_or_set_a_token(hub, monkeypatch, capsys, token):
    hub.add("acme/secret", QWEN_CFG, private=True)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    for model in ("acme/no-such-model",) + (() if token else ("acme/secret",)):
        message = cli_error(capsys, model)
        assert f"no model {model} on {hub.url}" in message and "check the id" in message
        assert "private" in message and "HF_TOKEN" in message


def test_a_repo_without_config_json_says_so(hub, capsys):
    hub.add("acme/llama-gguf", files={"llama-q4.gguf": b"GGUF"})
    message = cli_error(capsys, "acme/llama-gguf")
    assert "acme/llama-gguf" in message and "has no config.json" in message
    assert "local model directory" in message


def test_an_unreachable_endpoint_is_named_with_what_to_do(hf_home, monkeypatch, capsys):
    endpoint = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    message = cli_error(capsys, "acme/qwen-clone")
    assert f"cannot reach the Hugging Face Hub at {endpoint}" in message
    assert "HF_ENDPOINT" in message and "local model directory" in message


@pytest.mark.parametrize(
    "repo, says",
    [
        (Repo(status=503), "answered HTTP 503 for acme/qwen-clone/config.json: try again later"),
        (Repo(status=404), "answered HTTP 404 for acme/qwen-clone/config.json, not as a Hugging Face Hub"),
        (Repo(files={"config.json": b"{}"}, bare=True), "without the X-Repo-Commit/ETag headers of a Hugging Face Hub"),
    ],
    ids=["hub-down-503", "no-hub-404", "no-hub-200"],
)
def test_a_hub_that_is_down_or_no_hub_at_all_names_the_endpoint(hub, capsys, repo, says):
    hub.repos["acme/qwen-clone"] = repo
    message = cli_error(capsys, "acme/qwen-clone")
    assert hub.url in message and says in message
    assert "HF_ENDPOINT" in message
    assert [r.method for r in hub.seen()] == ["HEAD"]  # asked once, no retries, no download


def test_an_invalid_token_says_fix_or_unset_hf_token(hub, monkeypatch, capsys):
    hub.add("acme/qwen-clone", QWEN_CFG)
    monkeypatch.setenv("HF_TOKEN", "hf_revoked")
    message = cli_error(capsys, "acme/qwen-clone")
    assert "401" in message and "HF_TOKEN" in message and "hf auth login" in message
    assert [r.headers.get("authorization") for r in hub.seen()] == ["Bearer hf_revoked"]


@pytest.mark.parametrize(
    "body, says",
    [(b"[1, 2, 3]", "is not a JSON object (it holds a list)"), (b"{not json", "not valid JSON")],
    ids=["list", "garbage"],
)
def test_a_config_that_is_not_a_json_object_is_refused(hub, capsys, body, says):
    hub.add("acme/odd", body)
    message = cli_error(capsys, "acme/odd")
    assert "config.json of acme/odd" in message and says in message


def test_a_slash_name_that_is_neither_a_path_nor_an_id_asks_nothing_of_the_hub(hub, capsys):
    message = cli_error(capsys, "./models/missing")
    assert "neither an existing path nor a Hugging Face model id" in message
    assert "Closest" not in message
    assert hub.seen() == []


def test_names_without_a_slash_keep_the_closest_catalog_names(hub, capsys):
    message = cli_error(capsys, "llama-2-7")
    assert "Closest: " in message and "llama-2-7b" in message
    assert hub.seen() == []


# --- load_config: the raw config of any model type -------------------------------------------------


def test_load_config_returns_a_model_type_the_planner_cannot_read(hub, capsys):
    hub.add("state-spaces/mamba-130m-hf", MAMBA_CFG)
    config, source = load_config("state-spaces/mamba-130m-hf")
    assert config == MAMBA_CFG
    assert source == "Hugging Face Hub (state-spaces/mamba-130m-hf)"
    with pytest.raises(UnknownModel) as err:
        resolve_model("state-spaces/mamba-130m-hf")
    message = str(err.value)
    assert "state-spaces/mamba-130m-hf" in message and "model_type 'mamba' is not supported" in message
    assert "\n" not in message
    assert load_config("state-spaces/mamba-130m-hf") == (MAMBA_CFG, "local HF cache (state-spaces/mamba-130m-hf)")
    assert len([r for r in hub.seen() if r.method == "GET"]) == 1  # fetched once


def test_load_config_covers_catalog_alias_and_path_without_the_hub(hub, tmp_path):
    config, source = load_config("llama-2-7b")
    assert source == "catalog (llama-2-7b)" and config["model_type"] == "llama"
    config["hidden_size"] = 1  # a copy: the catalog is untouched
    assert resolve_model("llama-2-7b").config["hidden_size"] == 4096
    assert load_config("7b")[1] == "size alias 7b (llama-2-7b)"
    model_dir = tmp_path / "mamba-dir"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(MAMBA_CFG))
    assert load_config(str(model_dir)) == (MAMBA_CFG, f"path {(model_dir / 'config.json').resolve()}")
    with pytest.raises(UnknownModel, match="not supported"):
        resolve_model(str(model_dir))
    assert hub.seen() == []
