"""A stand-in for nvidia-ml-py's `pynvml`, for nodes without a GPU (these machines have none).

Put this directory on the node launcher's PYTHONPATH and it answers the calls flextui's
launcher makes, as nvidia-ml-py documents them, with figures a test can predict:

- 8 devices; device i is busy (50 + i) %, holds (10 + i) GiB of 80 GiB;
- nvmlDeviceGetComputeRunningProcesses(device i): every process whose environment has
  FAKE_NVML_JOB=<the launcher's own FAKE_NVML_JOB> and LOCAL_RANK=i, each holding
  (1 + i) GiB (a rank's GPU memory, as NVML reports it per pid).

With FAKE_NVML_NO_DRIVER=1 in the launcher's environment, nvmlInit fails as it does on a
node with the library but no driver.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

GIB = 1 << 30
DEVICES = 8


class NVMLError(Exception):
    pass


class NVMLError_DriverNotLoaded(NVMLError):
    def __str__(self) -> str:
        return "Driver Not Loaded"


def nvmlInit() -> None:
    if os.environ.get("FAKE_NVML_NO_DRIVER"):
        raise NVMLError_DriverNotLoaded()


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetCount() -> int:
    return DEVICES


def nvmlDeviceGetHandleByIndex(index: int):
    if not 0 <= index < DEVICES:
        raise NVMLError("Invalid Argument")
    return SimpleNamespace(index=index)


def nvmlDeviceGetHandleByUUID(uuid):
    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    if uuid.startswith("GPU-fake-"):
        return nvmlDeviceGetHandleByIndex(int(uuid.rsplit("-", 1)[1]))
    raise NVMLError("Not Found")


def nvmlDeviceGetUtilizationRates(handle):
    return SimpleNamespace(gpu=50 + handle.index, memory=20 + handle.index)


def nvmlDeviceGetMemoryInfo(handle):
    used = (10 + handle.index) * GIB
    return SimpleNamespace(total=80 * GIB, used=used, free=80 * GIB - used)


def nvmlDeviceGetComputeRunningProcesses(handle):
    job = os.environ.get("FAKE_NVML_JOB")
    found = []
    if not job:
        return found
    wanted = {f"FAKE_NVML_JOB={job}".encode(), f"LOCAL_RANK={handle.index}".encode()}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
        except OSError:
            continue
        if wanted <= env:
            found.append(SimpleNamespace(pid=int(name), usedGpuMemory=(1 + handle.index) * GIB))
    return found
