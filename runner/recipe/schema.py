"""Training recipes: a small typed schema read from flat, sectioned YAML.

A recipe is a handful of sections with scalar keys (`model`, `dataset`, `tuner`, `lora`,
`qlora`, `lisa`, `freeze`, `train`, `distributed`, `output`). Unknown keys and wrong types are
errors that name the file and line; `--set section.key=value` overrides are parsed like YAML
values and reported by the flag that set them. Values may be `auto`: `resolve` (runner.recipe.resolve)
fills them from the planner and the machine.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

AUTO = "auto"


class RecipeError(ValueError):
    """A recipe problem: `where` is `file:line`, a `--set` flag, or a section key."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


# --- sections ------------------------------------------------------------------------------


DEFAULT_MASTER_PORT = 29500
"""distributed.master_port unless the recipe names one (torch's own default); one-node runs on it
get a free port at launch (runner.launch.build.own_port)."""


@dataclass(frozen=True)
class ModelSection:
    path: str = ""
    """Local model directory, or a Hugging Face id `org/name` (downloaded once, before training, when
    the local cache lacks it; see runner.launch.download)."""
    revision: str = "main"
    """Branch, tag or commit of a Hub model."""
    init: str = "pretrained"
    """`pretrained` loads the weights; `random` builds the architecture from config.json (demos, tests)."""
    trust_remote_code: bool = False


@dataclass(frozen=True)
class DatasetSection:
    path: str = ""
    """jsonl / json / csv / parquet file, a directory saved by `datasets`, or a Hub data set `org/name`
    (fetched before launch; see runner.data.hub)."""
    subset: str = ""
    """A Hub data set's subset (configuration) directory, when it has several."""
    split: str = "train"
    """The Hub data set's split to train on."""
    format: str = AUTO
    """auto | alpaca | sharegpt | messages | text."""
    eval_split: Union[float, str] = 0.0
    """Fraction of the data held out for evaluation, or the path of an evaluation file."""
    max_seq_len: Union[int, str] = 2048
    packing: bool = False
    """Concatenate samples up to max_seq_len (fewer pad tokens, faster)."""
    overlong: str = "truncate"
    """truncate | drop: what to do with samples longer than max_seq_len (they are counted either way)."""


@dataclass(frozen=True)
class LoraSection:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: str = "all-linear"
    dora: bool = False


@dataclass(frozen=True)
class QloraSection:
    quant: str = "nf4"
    double_quant: bool = True


@dataclass(frozen=True)
class LisaSection:
    layers: int = 2
    """Decoder layers trained at a time (gamma)."""
    interval: int = 20
    """Steps between re-sampling the trained layers (K)."""


@dataclass(frozen=True)
class FreezeSection:
    trainable_layers: int = 2


@dataclass(frozen=True)
class TrainSection:
    epochs: float = 1.0
    max_steps: int = -1
    """Optimizer steps; overrides epochs when > 0."""
    micro_batch: Union[int, str] = AUTO
    grad_accum: Union[int, str] = AUTO
    global_batch: int = 64
    """Target sequences per optimizer step, used to choose grad_accum."""
    lr: Union[float, str] = AUTO
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = AUTO
    grad_ckpt: Union[bool, str] = AUTO
    attn: str = AUTO
    optim: str = "adamw"
    save_steps: int = 200
    eval_steps: int = 0
    """0 evaluates once per epoch when there is an evaluation split."""
    logging_steps: int = 10
    save_total_limit: int = 2
    seed: int = 42
    report_to: str = "none"


@dataclass(frozen=True)
class DistributedSection:
    gpus: Union[int, str] = AUTO
    """Processes (GPUs) per node; auto = the GPUs NVML sees (1 on a machine without GPUs)."""
    nodes: int = 1
    node_rank: int = 0
    zero: Union[int, str] = AUTO
    fsdp: str = "none"
    """PyTorch FSDP instead of DeepSpeed: none | full_shard | shard_grad_op (FSDP2 through HF Trainer
    and accelerate; offload optimizer+params is its CPU offload)."""
    offload: str = "none"
    launcher: str = AUTO
    """auto | python | torchrun | accelerate | deepspeed."""
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT
    hostfile: str = ""
    """DeepSpeed hostfile for multi-node runs through the deepspeed launcher."""
    device: str = AUTO
    """auto | cuda | cpu."""


@dataclass(frozen=True)
class OutputSection:
    dir: str = "runs"
    """Parent directory of run directories."""
    name: str = ""
    """Run name prefix (default: the recipe's file name)."""


@dataclass(frozen=True)
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    tuner: str = "lora"
    lora: LoraSection = field(default_factory=LoraSection)
    qlora: QloraSection = field(default_factory=QloraSection)
    lisa: LisaSection = field(default_factory=LisaSection)
    freeze: FreezeSection = field(default_factory=FreezeSection)
    train: TrainSection = field(default_factory=TrainSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    output: OutputSection = field(default_factory=OutputSection)
    source: str = field(default="", compare=False)
    """Where the recipe was read from (for messages and relative paths)."""

    def base_dir(self) -> Path:
        """The recipe file's directory (absolute)."""
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def path_of(self, value: str) -> Path:
        """A path from the recipe, relative to the recipe file, made absolute."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir() / p).resolve()

    def but(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def set(self, dotted: str, value: Any) -> "Recipe":
        """A copy with `section.key` (or `tuner`) set; no validation (see `validate`)."""
        section, _, key = dotted.partition(".")
        if not key:
            return dataclasses.replace(self, **{section: value})
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **{key: value})})


SECTIONS = {f.name: f.type for f in fields(Recipe) if f.name not in ("tuner", "source")}
CHOICES = {
    "tuner": ("full", "freeze", "lora", "qlora", "lisa"),
    "model.init": ("pretrained", "random"),
    "dataset.format": (AUTO, "alpaca", "sharegpt", "messages", "text"),
    "dataset.overlong": ("truncate", "drop"),
    "qlora.quant": ("nf4", "int8"),
    "train.scheduler": ("cosine", "linear", "constant", "constant_with_warmup"),
    "train.precision": (AUTO, "bf16-true", "bf16-mixed", "fp16-mixed", "fp32"),
    "train.attn": (AUTO, "flash", "sdpa", "eager"),
    "train.optim": ("adamw", "adamw-8bit", "paged-adamw-8bit", "paged-adamw", "sgd", "adafactor"),
    "train.report_to": ("none", "tensorboard", "wandb"),
    "distributed.offload": ("none", "optimizer", "optimizer+params"),
    "distributed.fsdp": ("none", "full_shard", "shard_grad_op", "hybrid_shard"),
    "distributed.launcher": (AUTO, "python", "torchrun", "accelerate", "deepspeed"),
    "distributed.device": (AUTO, "cuda", "cpu"),
}


# --- reading -------------------------------------------------------------------------------


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
STRING_UNIONS = {"dataset.eval_split": "a fraction or a file path"}
"""Union fields whose string values are more than `auto`."""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _coerce(value: Any, tp: Any, dotted: str, where: str) -> Any:
    """`value` as the field's type (`auto` allowed for Union fields); RecipeError says what was expected."""
    union = get_origin(tp) is Union
    options = get_args(tp) if union else (tp,)
    if union and value == AUTO:
        return AUTO
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str) and _is_number(value):
            return float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
        if option is str and isinstance(value, str) and (not union or dotted in STRING_UNIONS):
            return value
    expected = STRING_UNIONS.get(dotted) or " or ".join(_NAMES[o] for o in options if o is not str)
    if union and dotted not in STRING_UNIONS:
        expected += " or auto"
    raise RecipeError(where, f"{dotted} must be {expected}, got {value!r}")


def _check_choice(dotted: str, value: Any, where: str) -> None:
    choices = CHOICES.get(dotted)
    if choices and value not in choices:
        raise RecipeError(where, f"{dotted} is {value!r}; choose one of: {', '.join(map(str, choices))}")


def _unknown(where: str, key: str, known: list[str], prefix: str = "") -> RecipeError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known: {', '.join(known)}"
    return RecipeError(where, f"unknown key {prefix}{key}{hint}")


def _line(source: str, node: yaml.Node) -> str:
    return f"{source}:{node.start_mark.line + 1}"


def load_recipe(path: str | Path) -> Recipe:
    """Read and type-check a recipe file (auto values stay `auto`)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), "no such recipe file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(
            str(path), f"not a text file (byte {err.start} is not UTF-8); a recipe is a YAML file"
        ) from None
    except OSError as err:
        raise RecipeError(str(path), f"cannot read the recipe: {err.strerror}") from None
    return parse_recipe(text, str(path))


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise RecipeError(where, f"not valid YAML: {getattr(err, 'problem', err)}") from None
    recipe = Recipe(source=source)
    if root is None:
        return recipe
    if not isinstance(root, yaml.MappingNode):
        raise RecipeError(_line(source, root), "a recipe is a mapping of sections (model:, dataset:, train:, ...)")
    for key_node, value_node in root.value:
        key = key_node.value
        where = _line(source, key_node)
        if key == "tuner":
            value = yaml.safe_load(yaml.serialize(value_node))
            _check_choice("tuner", value, where)
            recipe = recipe.but(tuner=value)
            continue
        if key not in SECTIONS:
            raise _unknown(where, key, ["tuner", *SECTIONS])
        if not isinstance(value_node, yaml.MappingNode):
            raise RecipeError(where, f"{key} must be a section of key: value lines")
        recipe = _read_section(recipe, key, value_node, source)
    return recipe


def _read_section(recipe: Recipe, section: str, node: yaml.MappingNode, source: str) -> Recipe:
    section_type = get_type_hints(Recipe)[section]
    hints = get_type_hints(section_type)
    for key_node, value_node in node.value:
        key, where = key_node.value, _line(source, key_node)
        if key not in hints:
            raise _unknown(where, key, list(hints), prefix=f"{section}.")
        value = yaml.safe_load(yaml.serialize(value_node))
        recipe = _assign(recipe, f"{section}.{key}", value, where)
    return recipe


def _assign(recipe: Recipe, dotted: str, value: Any, where: str) -> Recipe:
    section, _, key = dotted.partition(".")
    if section == "tuner" and not key:
        _check_choice("tuner", value, where)
        return recipe.but(tuner=value)
    if section not in SECTIONS:
        raise _unknown(where, section, ["tuner", *SECTIONS])
    hints = get_type_hints(get_type_hints(Recipe)[section])
    if key not in hints:
        raise _unknown(where, key, list(hints), prefix=f"{section}.")
    value = _coerce(value, hints[key], dotted, where)
    _check_choice(dotted, value, where)
    return recipe.set(dotted, value)


PATH_KEYS = ("model.path", "dataset.path", "dataset.eval_split", "distributed.hostfile")


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Apply `--set section.key=value` overrides (values parsed as YAML scalars).

    Relative paths given this way are relative to the current directory (where the user typed
    them), not to the recipe file.
    """
    for item in overrides:
        where = f"--set {item}"
        dotted, sep, raw = item.partition("=")
        if not sep or not dotted.strip():
            raise RecipeError(where, "expected section.key=value, e.g. --set train.lr=3e-5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        dotted = dotted.strip()
        if dotted in PATH_KEYS and isinstance(value, str) and value and (Path.cwd() / value).exists():
            value = str((Path.cwd() / value).resolve())
        recipe = _assign(recipe, dotted, value, where)
    return recipe


# --- cross-field checks --------------------------------------------------------------------


def validate(recipe: Recipe) -> Recipe:
    """Checks that need more than one field; returns the recipe unchanged."""
    src = recipe.source or "recipe"
    if not recipe.model.path:
        raise RecipeError(src, "model.path is required (a local model directory or a cached Hugging Face id)")
    if not recipe.dataset.path:
        raise RecipeError(src, "dataset.path is required (jsonl, json, csv, parquet or a saved dataset directory)")
    t, d, ds = recipe.train, recipe.distributed, recipe.dataset
    if t.max_steps <= 0 and t.epochs <= 0:
        raise RecipeError(src, "set train.epochs > 0 or train.max_steps > 0")
    if isinstance(ds.eval_split, float) and not 0.0 <= ds.eval_split < 1.0:
        raise RecipeError(src, f"dataset.eval_split {ds.eval_split} must be a fraction in [0, 1) or a file path")
    if isinstance(ds.max_seq_len, int) and ds.max_seq_len < 8:
        raise RecipeError(src, "dataset.max_seq_len must be at least 8")
    for name in ("micro_batch", "grad_accum"):
        value = getattr(t, name)
        if value != AUTO and value < 1:
            raise RecipeError(src, f"train.{name} must be at least 1 or auto")
    at_least_one = {
        "logging_steps": "steps between loss lines in metrics.jsonl",
        "save_steps": "steps between checkpoints, which stop and resume restart from",
        "save_total_limit": "checkpoints kept; resume needs at least one",
    }
    for name, meaning in at_least_one.items():
        if getattr(t, name) < 1:
            raise RecipeError(src, f"train.{name} must be at least 1 ({meaning}), got {getattr(t, name)}")
    if t.eval_steps < 0:
        raise RecipeError(src, f"train.eval_steps must be 0 (once per epoch) or more, got {t.eval_steps}")
    if not 0.0 <= t.warmup_ratio < 1.0:
        raise RecipeError(src, f"train.warmup_ratio {t.warmup_ratio} must be a fraction in [0, 1)")
    if t.weight_decay < 0 or t.max_grad_norm < 0:
        raise RecipeError(src, "train.weight_decay and train.max_grad_norm must be 0 or more")
    if t.lr != AUTO and not 0 < t.lr < 1:
        raise RecipeError(src, f"train.lr {t.lr} is out of range (0, 1)")
    if d.zero != AUTO and d.zero not in (0, 1, 2, 3):
        raise RecipeError(src, "distributed.zero must be 0, 1, 2, 3 or auto")
    if d.gpus != AUTO and d.gpus < 1:
        raise RecipeError(src, "distributed.gpus must be at least 1 or auto")
    if d.nodes < 1 or not 0 <= d.node_rank < d.nodes:
        raise RecipeError(src, f"distributed.node_rank {d.node_rank} must be in [0, nodes={d.nodes})")
    if d.fsdp != "none":
        if d.zero not in (0, AUTO):
            raise RecipeError(
                src, f"distributed.fsdp {d.fsdp} and distributed.zero {d.zero} are two sharding engines; set one"
            )
        if d.fsdp == "hybrid_shard":
            raise RecipeError(
                src,
                "distributed.fsdp hybrid_shard is planned (ftui plan --fsdp hybrid_shard) but not launched yet: "
                "it needs a 2-D device mesh; use full_shard",
            )
        if d.offload == "optimizer":
            raise RecipeError(
                src, "FSDP offloads parameters, gradients and optimizer states together: use offload optimizer+params"
            )
        if recipe.tuner == "lisa":
            raise RecipeError(src, "LISA changes its trained layers every few steps; FSDP cannot follow. Use fsdp none")
        if d.launcher == "deepspeed":
            raise RecipeError(src, "distributed.fsdp runs through torchrun or accelerate, not the deepspeed launcher")
    elif d.offload != "none" and d.zero in (0,):
        raise RecipeError(src, "distributed.offload needs DeepSpeed: set distributed.zero to 2 or 3 (or auto)")
    if d.offload == "optimizer+params" and d.zero not in (3, AUTO) and d.fsdp == "none":
        raise RecipeError(src, "distributed.offload optimizer+params needs distributed.zero 3")
    if recipe.tuner == "lisa" and d.zero not in (0, AUTO):
        raise RecipeError(
            src, "LISA changes its trained layers every few steps; DeepSpeed ZeRO cannot follow. Use distributed.zero 0"
        )
    if recipe.tuner == "qlora" and d.zero == 3:
        raise RecipeError(src, "QLoRA with ZeRO-3 is not supported; use distributed.zero 0 or 2")
    if d.launcher == "python" and ((d.gpus not in (AUTO, 1)) or d.nodes > 1):
        raise RecipeError(src, "distributed.launcher python runs one process; use torchrun for several")
    if recipe.lisa.layers < 1 or recipe.lisa.interval < 1:
        raise RecipeError(src, "lisa.layers and lisa.interval must be at least 1")
    if recipe.lora.rank < 1 or not 0 <= recipe.lora.dropout < 1:
        raise RecipeError(src, "lora.rank must be >= 1 and lora.dropout in [0, 1)")
    return recipe


# --- writing -------------------------------------------------------------------------------


def to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain sections (for recipe.yaml in the run directory)."""
    out: dict[str, Any] = {}
    for f in fields(Recipe):
        if f.name == "source":
            continue
        value = getattr(recipe, f.name)
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def dump_recipe(recipe: Recipe, header: str = "") -> str:
    body = yaml.safe_dump(to_dict(recipe), sort_keys=False, default_flow_style=False)
    return (header + "\n" if header else "") + body
