"""The model catalog: every shipped config reads, parameter counts are exact, names resolve."""

import json
import warnings

import pytest

from planner.arch import Architecture
from planner.catalog import MODELS_DIR, UnknownModel, entries, resolve_model
from planner.hfconfig import architecture_from_config

CATALOG_FILES = sorted(MODELS_DIR.glob("*.json"))
NAMES = [e.name for e in entries()]

# Families whose modeling code lives only in the model repos (remote code), not in transformers.
REMOTE_CODE_TYPES = {"qwen", "chatglm", "baichuan", "internlm2"}
# Keys of a hub config.json that are about the checkpoint, not the architecture.
NON_ARCH_KEYS = {"auto_map", "_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype"}


def _transformers_param_count(cfg: dict) -> int:
    """Parameters of the model transformers builds from `cfg`, on the meta device (no memory)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model_cfg = transformers.AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in NON_ARCH_KEYS})
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(model_cfg)
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once


# --- every shipped file ------------------------------------------------------------------


@pytest.mark.parametrize("path", CATALOG_FILES, ids=[p.stem for p in CATALOG_FILES])
def test_catalog_file_reads_and_matches_its_published_count(path):
    data = json.loads(path.read_text())
    arch = architecture_from_config(data["config"])
    assert isinstance(arch, Architecture)
    assert arch.layers > 0 and arch.hidden > 0 and arch.vocab > 0
    assert arch.heads % arch.kv_heads == 0, "query heads must be a multiple of kv heads"
    if data.get("published_params") is not None:
        assert arch.params == data["published_params"]


def test_catalog_names_are_unique_and_files_are_named_after_them():
    assert len(NAMES) == len(set(NAMES))
    assert sorted(p.stem for p in CATALOG_FILES) == sorted(NAMES)


REQUIRED = """
llama-2-7b llama-2-13b llama-2-70b llama-3-8b llama-3-70b llama-3.1-8b llama-3.1-70b llama-3.1-405b
llama-3.2-1b llama-3.2-3b llama-3.3-70b mistral-7b mixtral-8x7b qwen-1.8b qwen-7b qwen-14b qwen-72b
qwen1.5-7b qwen1.5-14b qwen1.5-72b qwen2.5-0.5b qwen2.5-1.5b qwen2.5-3b qwen2.5-7b qwen2.5-14b qwen2.5-32b
qwen2.5-72b qwen3-0.6b qwen3-1.7b qwen3-4b qwen3-8b qwen3-14b qwen3-32b qwen3-30b-a3b yi-6b yi-34b
baichuan2-7b baichuan2-13b chatglm3-6b glm4-9b gemma-2b gemma-7b gemma-2-2b gemma-2-9b gemma-2-27b phi-2
phi-3-mini phi-3-medium tinyllama-1.1b deepseek-llm-7b internlm2-7b internlm2-20b vicuna-7b vicuna-13b
falcon-7b falcon-40b
""".split()


@pytest.mark.parametrize("name", REQUIRED)
def test_required_model_is_in_the_catalog(name):
    entry = resolve_model(name)
    assert entry.name == name
    assert entry.source == "catalog"


# --- exact counts against transformers ---------------------------------------------------


def _transformers_cases():
    out = []
    for entry in entries():
        if entry.config.get("model_type") in REMOTE_CODE_TYPES:
            continue
        out.append(pytest.param(entry.name, id=entry.name))
    return out


@pytest.mark.parametrize("name", _transformers_cases())
def test_param_count_equals_transformers_on_meta_device(name):
    entry = resolve_model(name)
    assert _transformers_param_count(entry.config) == entry.arch.params


KNOWN_PARAMS = {
    # Published totals (model cards / safetensors index metadata).
    "qwen-7b": 7_721_324_544,
    "llama-2-7b": 6_738_415_616,
    "mistral-7b": 7_241_732_096,
    "llama-3-8b": 8_030_261_248,
    "chatglm3-6b": 6_243_584_000,
}


@pytest.mark.parametrize("name,expected", KNOWN_PARAMS.items())
def test_known_parameter_counts(name, expected):
    assert resolve_model(name).arch.params == expected


def test_qwen_7b_lora_counts_match_ms_swift_benchmark():
    # ms-swift's Qwen-7B benchmark table: LoRA r=8 on c_attn 4.19M, on all linears 17.89M.
    arch = resolve_model("qwen-7b").arch
    assert arch.lora_params("c_attn", 8) == 4_194_304
    assert arch.lora_params("all-linear", 8) == 17_891_328


# --- LoRA targets against peft -----------------------------------------------------------


def _peft_trainable(cfg: dict, targets: str = "all-linear", rank: int = 8, meta: bool = False) -> int:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model_cfg = transformers.AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in NON_ARCH_KEYS})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if meta:
            with torch.device("meta"):
                model = transformers.AutoModelForCausalLM.from_config(model_cfg)
        else:
            model = transformers.AutoModelForCausalLM.from_config(model_cfg)
        wrapped = peft.get_peft_model(model, peft.LoraConfig(r=rank, target_modules=targets))
    trainable, _ = wrapped.get_nb_trainable_parameters()
    return trainable


TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    vocab_size=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

TINY_FAMILIES = {
    "llama": dict(model_type="llama"),
    "llama-biased": dict(model_type="llama", attention_bias=True, mlp_bias=True),
    "qwen2": dict(model_type="qwen2"),
    "qwen2-tied": dict(model_type="qwen2", tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", head_dim=16),
    "phi3-fused-qkv": dict(model_type="phi3"),
    "gemma2": dict(model_type="gemma2", head_dim=16),
    "gemma": dict(model_type="gemma", head_dim=16),
    "mistral": dict(model_type="mistral"),
    "phi": dict(model_type="phi"),
    "falcon-mqa": dict(model_type="falcon"),
    "falcon-new-arch": dict(model_type="falcon", new_decoder_architecture=True, num_kv_heads=2),
}
MOE_FAMILIES = {
    "mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
    "qwen3-moe": dict(
        model_type="qwen3_moe", head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32
    ),
}


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_config_param_count_equals_transformers(family):
    cfg = {**TINY, **TINY_FAMILIES[family]}
    assert _transformers_param_count(cfg) == architecture_from_config(cfg).params


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3-fused-qkv", "gemma2", "qwen3", "phi", "falcon-mqa"])
def test_lora_all_linear_equals_peft_trainable_count(family):
    cfg = {**TINY, **TINY_FAMILIES[family]}
    assert architecture_from_config(cfg).lora_params("all-linear", 8) == _peft_trainable(cfg)


@pytest.mark.parametrize("targets", ["q_proj,v_proj", "o_proj", "gate_proj,up_proj,down_proj"])
def test_lora_named_targets_equal_peft_on_tiny_llama(targets):
    cfg = {**TINY, **TINY_FAMILIES["llama"]}
    arch = architecture_from_config(cfg)
    assert arch.lora_params(targets, 4) == _peft_trainable(cfg, targets.split(","), rank=4)


def test_llama_2_7b_lora_all_linear_equals_peft_on_meta_device():
    entry = resolve_model("llama-2-7b")
    assert entry.arch.lora_params("all-linear", 8) == _peft_trainable(entry.config, meta=True)


def test_phi3_q_proj_alias_targets_the_fused_qkv_proj():
    arch = architecture_from_config({**TINY, "model_type": "phi3"})
    assert [lin.name for lin in arch.lora_targets("q_proj")] == ["qkv_proj"]


def test_unknown_lora_target_names_the_valid_modules():
    arch = resolve_model("llama-2-7b").arch
    with pytest.raises(ValueError, match="q_proj") as err:
        arch.lora_targets("c_attn")
    assert "c_attn" in str(err.value)


# --- regressions ------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["qwen3", "gemma", "glm"])
def test_head_dim_default_when_config_omits_head_dim(model_type):
    # Qwen3Config and GlmConfig default head_dim=128, GemmaConfig 256; a local config.json without
    # the key gets that width in transformers, but the planner assumes hidden_size / heads.
    cfg = {**TINY, "model_type": model_type}
    assert architecture_from_config(cfg).params == _transformers_param_count(cfg)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_lora_on_fused_moe_experts_equals_peft(family):
    # transformers 5 keeps experts as 3-D parameters; peft adapts them (and the router) its own way.
    cfg = {**TINY, **MOE_FAMILIES[family]}
    assert architecture_from_config(cfg).lora_params("all-linear", 8) == _peft_trainable(cfg)


# --- resolve_model -----------------------------------------------------------------------


def test_size_alias_resolves_with_source_naming_the_alias():
    entry = resolve_model("7b")
    assert entry.name == "llama-2-7b"
    assert "7b" in entry.source and "alias" in entry.source


@pytest.mark.parametrize("name", ["meta-llama/Llama-2-7b-hf", "LLAMA-2-7B", "Llama-2-7b-hf", " llama-2-7b "])
def test_hf_id_and_case_insensitive_names_resolve(name):
    assert resolve_model(name).name == "llama-2-7b"


LLAMA_CFG = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 128,
}


def test_local_model_directory_resolves(tmp_path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(LLAMA_CFG))
    entry = resolve_model(str(model_dir))
    assert entry.name == "my-model"
    assert entry.source.startswith("path")
    assert entry.arch.params == architecture_from_config(LLAMA_CFG).params


def test_bare_config_json_path_resolves(tmp_path):
    path = tmp_path / "cfgdir" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(LLAMA_CFG))
    entry = resolve_model(str(path))
    assert entry.arch.layers == 2 and entry.arch.hidden == 64
    assert str(path) in entry.source


def test_hf_cache_layout_resolves_by_id(tmp_path, monkeypatch):
    snap = tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(LLAMA_CFG))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # "acme/tiny-llama" must not exist as a relative path
    entry = resolve_model("acme/tiny-llama")
    assert entry.name == "acme/tiny-llama"
    assert "cache" in entry.source
    assert entry.arch.hidden == 64


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModel) as err:
        resolve_model("llama-2-7")
    assert "llama-2-7b" in str(err.value)
    assert "llama-2-7" in str(err.value)


def test_unsupported_model_type_names_it(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**LLAMA_CFG, "model_type": "t5"}))
    with pytest.raises(UnknownModel) as err:
        resolve_model(str(path))
    message = str(err.value)
    assert "model_type" in message and "'t5'" in message and "not supported" in message


def test_directory_without_config_json_says_so(tmp_path):
    with pytest.raises(UnknownModel, match="no config.json"):
        resolve_model(str(tmp_path))


# --- LoRA target names across families ---------------------------------------------------


@pytest.mark.parametrize(
    ("model", "typed", "expected"),
    [
        ("qwen-7b", "q_proj,v_proj", ["c_attn"]),
        ("chatglm3-6b", "q_proj", ["query_key_value"]),
        ("phi-3-mini", "q_proj,gate_proj", ["qkv_proj", "gate_up_proj"]),
        ("falcon-7b", "o_proj,down_proj", ["dense", "dense_4h_to_h"]),
        ("llama-2-7b", "q_proj,v_proj", ["q_proj", "v_proj"]),
    ],
)
def test_llama_module_names_map_to_a_familys_single_module_for_that_role(model, typed, expected):
    assert [lin.name for lin in resolve_model(model).arch.lora_targets(typed)] == expected


def test_an_ambiguous_llama_name_is_an_error_listing_the_real_modules():
    with pytest.raises(ValueError, match="w1, w2"):
        resolve_model("qwen-7b").arch.lora_targets("gate_proj")  # Qwen-1 has two MLP input projections


def test_size_aliases_name_a_shipped_file_and_shadow_no_catalog_key():
    """A size alias is resolved from its one file, before the catalog index is built: that is the
    same answer only while no name, id or alias of the catalog spells a size alias."""
    from planner import catalog

    for alias, name in catalog.SIZE_ALIASES.items():
        assert (catalog.MODELS_DIR / f"{name}.json").is_file(), alias
        assert catalog._named(name).name == name
        assert catalog._norm(alias) not in catalog._index(), f"size alias {alias} is also a catalog key"
        resolved = resolve_model(alias)
        assert (resolved.name, resolved.hf_id, resolved.source) == (
            name,
            catalog._named(name).hf_id,
            f"size alias {alias}",
        )
