"""GPU specifications the planner needs: memory, bf16/flash support, peak speed, links.

Memory is the total NVML reports for the board (MiB); peak TFLOP/s are NVIDIA's dense
(no-sparsity) tensor-core figures from the product datasheets; link bandwidths are the usual
achievable all-reduce bus bandwidths per GPU, not the marketing aggregate.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model."""

    key: str
    """Name used on the command line (`a100-80g`)."""
    name: str
    """Name as NVML reports it (`NVIDIA A100-SXM4-80GB`)."""
    memory_mib: int
    """Total memory as NVML reports it."""
    compute_capability: tuple[int, int]
    tflops_16bit: float
    """Peak dense fp16/bf16 tensor-core TFLOP/s (fp32 accumulate)."""
    tflops_fp32: float
    """Peak fp32 TFLOP/s without TF32."""
    intra_node_gbps: float
    """Achievable all-reduce bus bandwidth between GPUs of one node, GB/s (NVLink or PCIe)."""
    inter_node_gbps: float = 25.0
    """Achievable network bandwidth per GPU between nodes, GB/s (200 Gb/s InfiniBand per GPU)."""

    @property
    def memory_gib(self) -> float:
        return self.memory_mib / 1024

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20

    @property
    def bf16(self) -> bool:
        """bf16 arithmetic needs Ampere (sm_80) or newer."""
        return self.compute_capability >= (8, 0)

    @property
    def flash_attention(self) -> bool:
        """FlashAttention-2 kernels need Ampere (sm_80) or newer."""
        return self.compute_capability >= (8, 0)


_NVLINK_A100, _NVLINK_H100, _PCIE4, _PCIE5 = 230.0, 370.0, 20.0, 40.0

GPUS: tuple[GpuSpec, ...] = (
    GpuSpec("a100-80g", "NVIDIA A100-SXM4-80GB", 81920, (8, 0), 312, 19.5, _NVLINK_A100),
    GpuSpec("a100-40g", "NVIDIA A100-SXM4-40GB", 40960, (8, 0), 312, 19.5, _NVLINK_A100),
    GpuSpec("a800-80g", "NVIDIA A800-SXM4-80GB", 81920, (8, 0), 312, 19.5, 150.0),
    GpuSpec("h100-80g", "NVIDIA H100 80GB HBM3", 81559, (9, 0), 989, 67, _NVLINK_H100),
    GpuSpec("h100-pcie", "NVIDIA H100 PCIe", 81559, (9, 0), 756, 51, _PCIE5),
    GpuSpec("h100-nvl", "NVIDIA H100 NVL", 95830, (9, 0), 835, 60, _PCIE5),
    GpuSpec("h800-80g", "NVIDIA H800", 81559, (9, 0), 989, 67, 150.0),
    GpuSpec("h200", "NVIDIA H200", 143771, (9, 0), 989, 67, _NVLINK_H100),
    GpuSpec("h20", "NVIDIA H20", 97871, (9, 0), 148, 44, _NVLINK_H100),
    GpuSpec("l40s", "NVIDIA L40S", 46068, (8, 9), 362, 91.6, _PCIE4),
    GpuSpec("l40", "NVIDIA L40", 46068, (8, 9), 181, 90.5, _PCIE4),
    GpuSpec("l4", "NVIDIA L4", 23034, (8, 9), 121, 30.3, _PCIE4),
    GpuSpec("a10g", "NVIDIA A10G", 23028, (8, 6), 70, 31.2, _PCIE4),
    GpuSpec("a10", "NVIDIA A10", 23028, (8, 6), 125, 31.2, _PCIE4),
    GpuSpec("a6000", "NVIDIA RTX A6000", 49140, (8, 6), 155, 38.7, _PCIE4),
    GpuSpec("rtx6000-ada", "NVIDIA RTX 6000 Ada Generation", 49140, (8, 9), 364, 91.1, _PCIE4),
    GpuSpec("rtx3090", "NVIDIA GeForce RTX 3090", 24576, (8, 6), 71, 35.6, _PCIE4),
    GpuSpec("rtx4090", "NVIDIA GeForce RTX 4090", 24564, (8, 9), 165, 82.6, _PCIE4),
    GpuSpec("v100-16g", "Tesla V100-SXM2-16GB", 16160, (7, 0), 125, 15.7, 120.0),
    GpuSpec("v100-32g", "Tesla V100-SXM2-32GB", 32510, (7, 0), 125, 15.7, 120.0),
    GpuSpec("t4", "Tesla T4", 15360, (7, 5), 65, 8.1, 10.0),
)

_ALIASES = {
    "a100": "a100-80g",
    "a100-80gb": "a100-80g",
    "a100-40gb": "a100-40g",
    "a800": "a800-80g",
    "h100": "h100-80g",
    "h100-80gb": "h100-80g",
    "h100-sxm": "h100-80g",
    "h800": "h800-80g",
    "h200-141g": "h200",
    "4090": "rtx4090",
    "3090": "rtx3090",
    "rtx-4090": "rtx4090",
    "rtx-3090": "rtx3090",
    "v100": "v100-32g",
    "v100-32gb": "v100-32g",
    "v100-16gb": "v100-16g",
    "rtx-a6000": "a6000",
}


def _lookup(key: str) -> GpuSpec | None:
    key = _ALIASES.get(key, key)
    return next((spec for spec in GPUS if spec.key == key), None)


def gpu_spec(name: str) -> GpuSpec:
    """The spec for a name typed on the command line (`a100-80g`, `A100`, `a10g-24g`, `rtx_4090`);
    ValueError lists close matches."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    spec = _lookup(key)
    if spec is None and "-" in key:
        base, _, size = key.rpartition("-")  # a memory suffix on a name that has one size: l40s-48g
        gib = size.rstrip("gb")
        found = _lookup(base)
        if found is not None and gib.isdigit() and abs(found.memory_gib - int(gib)) <= 0.1 * int(gib):
            spec = found
    if spec is not None:
        return spec
    choices = [g.key for g in GPUS]
    close = difflib.get_close_matches(key, choices, n=4, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown GPU type {name!r}; {hint}known: {', '.join(choices)}")


def match_nvml_name(nvml_name: str, memory_mib: int) -> GpuSpec:
    """The table entry for a GPU NVML reports, or a generic spec carrying its real memory size."""
    low = nvml_name.lower()
    for spec in GPUS:
        if spec.name.lower() == low:
            return spec
    tokens = [t for t in low.replace("nvidia", "").replace("geforce", "").replace("-", " ").split() if t]
    best = [s for s in GPUS if all(t in s.name.lower() for t in tokens[:1])]
    best.sort(key=lambda s: abs(s.memory_mib - memory_mib))
    if best and abs(best[0].memory_mib - memory_mib) < 4096:
        return best[0]
    return GpuSpec(low.replace(" ", "-"), nvml_name, memory_mib, (8, 0), 100.0, 20.0, _PCIE4)


def generic_gpu(memory_gib: float) -> GpuSpec:
    """A GPU known only by its memory (`--gpu-mem`): assumed Ampere-class for features, A100-like speed."""
    return GpuSpec(
        f"{memory_gib:g}gib", f"GPU with {memory_gib:g} GiB", int(round(memory_gib * 1024)), (8, 0), 312, 19.5, _PCIE4
    )
