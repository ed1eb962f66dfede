"""The only module that talks to NVML: GPU snapshots as plain dataclasses.

Every query goes through one wrapper that turns an NVML error into `None` (a field the GPU does
not support, or a GPU that went away), so callers never see NVML exceptions. Fields that do not
change (name, total memory, UUID) are read once per GPU and cached.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class NoGpu(RuntimeError):
    """NVML is not usable here; the message says why in words a user can act on."""


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int | None


@dataclass(frozen=True)
class GpuSnapshot:
    index: int
    name: str
    uuid: str
    memory_total: int
    memory_used: int | None
    utilization: int | None
    """Percent of time a kernel ran over the last sample period."""
    temperature: int | None
    power_w: float | None
    power_limit_w: float | None
    processes: tuple[GpuProcess, ...] = ()

    @property
    def memory_total_mib(self) -> int:
        return self.memory_total // 2**20

    def as_json(self) -> dict[str, Any]:
        """What a node records of its GPU beside the metrics (RUN_DIR/nodes/<node>.json)."""
        keys = ("index", "name", "memory_used", "memory_total", "utilization", "power_w", "power_limit_w")
        return {k: getattr(self, k) for k in keys}


class NvmlReader:
    """Reads GPUs through an NVML binding (`pynvml` from nvidia-ml-py, or a fake with its API)."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._static: dict[int, tuple[str, str, int]] = {}
        self._started = False

    def _lib(self) -> Any:
        if self._nvml is None:
            self._nvml = default_binding()
        return self._nvml

    def start(self) -> None:
        """Initialise NVML; NoGpu explains why it cannot be used."""
        if self._started:
            return
        nvml = self._lib()
        try:
            nvml.nvmlInit()
        except Exception as err:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise NoGpu(f"no NVIDIA GPU found: {_nvml_message(err)}") from None
        self._started = True

    def close(self) -> None:
        if self._started:
            self._query(self._lib().nvmlShutdown)
            self._started = False

    def _query(self, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except Exception:
            return None

    def count(self) -> int:
        self.start()
        return self._query(self._lib().nvmlDeviceGetCount) or 0

    def snapshot(self) -> list[GpuSnapshot]:
        """Every GPU now; a GPU that stops answering is left out."""
        self.start()
        nvml = self._lib()
        out = []
        for index in range(self.count()):
            handle = self._query(nvml.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                continue
            static = self._static_info(index, handle)
            if static is None:
                continue
            name, uuid, total = static
            mem = self._query(nvml.nvmlDeviceGetMemoryInfo, handle)
            util = self._query(nvml.nvmlDeviceGetUtilizationRates, handle)
            temp = self._query(nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
            power = self._query(nvml.nvmlDeviceGetPowerUsage, handle)
            limit = self._query(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
            procs = self._query(nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
            out.append(
                GpuSnapshot(
                    index,
                    name,
                    uuid,
                    total,
                    None if mem is None else int(mem.used),
                    None if util is None else int(util.gpu),
                    None if temp is None else int(temp),
                    None if power is None else power / 1000.0,
                    None if limit is None else limit / 1000.0,
                    tuple(GpuProcess(int(p.pid), _used(p)) for p in procs),
                )
            )
        return out

    def _static_info(self, index: int, handle: Any) -> tuple[str, str, int] | None:
        if index not in self._static:
            nvml = self._lib()
            name = self._query(nvml.nvmlDeviceGetName, handle)
            mem = self._query(nvml.nvmlDeviceGetMemoryInfo, handle)
            if name is None or mem is None:
                return None
            uuid = self._query(nvml.nvmlDeviceGetUUID, handle) or ""
            self._static[index] = (_text(name), _text(uuid), int(mem.total))
        return self._static[index]


FAKE_ENV = "FTUI_FAKE_NVML"
"""Set to a scenario name of runner.machine.fake_nvml (none, 1xa100, 8xh100, vanishing) for demos and
tests; or one per node, `n1=8xh100,n2=1xa100,*=none`, picked by the node's name (node_name())."""


def node_name(environ=os.environ) -> str:
    """This node's name: Slurm's (SLURMD_NODENAME) inside a job, else the host name."""
    import socket

    return environ.get("SLURMD_NODENAME") or socket.gethostname()


def fake_scenario(environ=os.environ) -> str | None:
    """The fake NVML scenario for this node, from $FTUI_FAKE_NVML (None: use the real NVML)."""
    text = environ.get(FAKE_ENV, "").strip()
    if "=" not in text:
        return text or None
    table = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    return table.get(node_name(environ)) or table.get("*") or "none"


def default_binding() -> Any:
    """The real `pynvml` module, or the fake scenario named by $FTUI_FAKE_NVML."""
    scenario = fake_scenario()
    if scenario:
        from .fake_nvml import FakeNvml

        return FakeNvml(scenario)
    try:
        return importlib.import_module("pynvml")
    except ImportError as err:
        raise NoGpu("no NVIDIA GPU found: the NVML bindings (nvidia-ml-py) are not installed") from err


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _used(proc: Any) -> int | None:
    used = getattr(proc, "usedGpuMemory", None)
    return None if used is None or used < 0 or used >= 2**63 - 1 else int(used)


def _nvml_message(err: Exception) -> str:
    name = type(err).__name__
    if "LibraryNotFound" in name:
        return "the NVIDIA driver library (libnvidia-ml) is not installed on this machine"
    if "DriverNotLoaded" in name:
        return "the NVIDIA driver is not loaded"
    if "NoPermission" in name:
        return "no permission to query the GPUs"
    return str(err) or name


def local_gpus(nvml: Any = None) -> list[GpuSnapshot]:
    """The GPUs of this machine; NoGpu when there are none or NVML is unusable."""
    reader = NvmlReader(nvml)
    try:
        gpus = reader.snapshot()
    finally:
        reader.close()
    if not gpus:
        raise NoGpu("no NVIDIA GPU found: NVML sees no devices")
    return gpus
