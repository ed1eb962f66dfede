"""ftui planner: memory, throughput and recommendations for LLM fine-tuning, in pure Python.

Importing this package never imports torch, textual or NVML.
"""

from .arch import Architecture, Linear
from .catalog import ModelEntry, UnknownModel, resolve_model
from .gpus import GPUS, GpuSpec, generic_gpu, gpu_spec
from .hfconfig import ConfigError, architecture_from_config
from .memory import GIB, PARTS, MemoryEstimate, Term, estimate
from .plan import Estimate, Plan, evaluate_setup, make_plan
from .recommend import Recommendation, recommend
from .rules import Refusal, refusals
from .setup import Cluster, Setup, SetupError
from .throughput import Throughput, estimate_throughput

__all__ = [
    "Architecture",
    "Linear",
    "ModelEntry",
    "UnknownModel",
    "resolve_model",
    "GPUS",
    "GpuSpec",
    "generic_gpu",
    "gpu_spec",
    "ConfigError",
    "architecture_from_config",
    "GIB",
    "PARTS",
    "MemoryEstimate",
    "Term",
    "estimate",
    "Estimate",
    "Plan",
    "evaluate_setup",
    "make_plan",
    "Recommendation",
    "recommend",
    "Refusal",
    "refusals",
    "Cluster",
    "Setup",
    "SetupError",
    "Throughput",
    "estimate_throughput",
]
