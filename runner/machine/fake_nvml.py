"""A stand-in for the `pynvml` module with named scenarios, for tests and the demo mode.

Scenarios: `none` (no driver), `1xa100` (one idle A100 80GB), `8xh100` (eight busy H100s with
processes), `vanishing` (two A100s; the second stops answering after the first snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

MIB = 2**20


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - the name pynvml uses
    pass


class NVMLError_GpuIsLost(NVMLError):  # noqa: N801
    pass


@dataclass
class FakeGpu:
    name: str
    total_mib: int
    used_mib: int = 0
    util: int = 0
    temp: int = 35
    power_mw: int = 60_000
    limit_mw: int = 400_000
    processes: list[tuple[int, int]] = field(default_factory=list)
    """(pid, used MiB)."""
    lost_after: int | None = None
    """Snapshots answered before the GPU is lost."""


def _scenario(name: str) -> list[FakeGpu] | None:
    if name == "none":
        return None
    if name == "1xa100":
        return [FakeGpu("NVIDIA A100-SXM4-80GB", 81920, used_mib=4)]
    if name == "8xh100":
        return [
            FakeGpu(
                "NVIDIA H100 80GB HBM3",
                81559,
                used_mib=61_000 + 500 * i,
                util=97 - i,
                temp=62 + i,
                power_mw=610_000,
                limit_mw=700_000,
                processes=[(4100 + i, 60_500 + 500 * i)],
            )
            for i in range(8)
        ]
    if name == "vanishing":
        return [
            FakeGpu("NVIDIA A100-SXM4-80GB", 81920, used_mib=1200),
            FakeGpu("NVIDIA A100-SXM4-80GB", 81920, used_mib=1200, lost_after=1),
        ]
    raise ValueError(f"unknown fake NVML scenario {name!r}; known: none, 1xa100, 8xh100, vanishing")


class FakeNvml:
    """Implements the part of the pynvml API ftui uses."""

    NVML_TEMPERATURE_GPU = 0
    NVMLError = NVMLError

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario
        self.gpus = _scenario(scenario)
        self.count_calls = 0

    def nvmlInit(self) -> None:  # noqa: N802
        if self.gpus is None:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self.count_calls += 1
        return len(self.gpus or [])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        gpu = self.gpus[index]
        if gpu.lost_after is not None and self.count_calls > gpu.lost_after:
            raise NVMLError_GpuIsLost("GPU is lost")
        return gpu

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:  # noqa: N802
        return gpu.name

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:  # noqa: N802
        return f"GPU-fake-{self.gpus.index(gpu)}"

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> SimpleNamespace:  # noqa: N802
        total = gpu.total_mib * MIB
        used = gpu.used_mib * MIB
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=gpu.util, memory=gpu.util // 2)

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:  # noqa: N802
        return gpu.temp

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:  # noqa: N802
        return gpu.power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, gpu: FakeGpu) -> int:  # noqa: N802
        return gpu.limit_mw

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[SimpleNamespace]:  # noqa: N802
        return [SimpleNamespace(pid=pid, usedGpuMemory=mib * MIB) for pid, mib in gpu.processes]
