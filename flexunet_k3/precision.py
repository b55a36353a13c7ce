"""What `train.precision: auto` means on this machine (keras-free, but for `this_machine`).

bfloat16 is native on CPUs with AMX or AVX512_BF16 and emulated (10-100x slower) on others; on
GPUs it is native from compute capability 8.0, and float16 on older GPUs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Device:
    """What the precision depends on: the CPU's flags and the GPU in use (None: no GPU)."""

    cpu_flags: frozenset[str] = frozenset()
    gpu_capability: tuple[int, int] | None = None


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The first `flags` line of /proc/cpuinfo's text, as a set (empty if there is none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def native_bf16_flag(device: Device) -> str | None:
    """The CPU flag that makes bfloat16 native on this CPU, or None."""
    return next((flag for flag in NATIVE_BF16_CPU_FLAGS if flag in device.cpu_flags), None)


def resolve_precision(requested: str, device: Device) -> tuple[str, str]:
    """The Keras policy for `requested` (`auto` or a policy) on `device`, and why."""
    if requested != "auto":
        return requested, "configured"
    if device.gpu_capability is not None:
        major, minor = device.gpu_capability
        if device.gpu_capability >= (8, 0):
            return "mixed_bfloat16", f"GPU compute capability {major}.{minor} >= 8.0"
        return "mixed_float16", f"GPU compute capability {major}.{minor} < 8.0"
    flag = native_bf16_flag(device)
    if flag is not None:
        return "mixed_bfloat16", f"CPU has {flag}"
    return "float32", f"CPU has no {' or '.join(NATIVE_BF16_CPU_FLAGS)}"


def emulated(precision: str, device: Device) -> bool:
    """Whether `precision` runs bfloat16 emulated: on a CPU without native bfloat16."""
    return (
        precision == "mixed_bfloat16"
        and device.gpu_capability is None
        and native_bf16_flag(device) is None
    )


@functools.cache
def this_cpu_flags() -> frozenset[str]:
    """This CPU's flags (/proc/cpuinfo); none known off Linux, so no native bfloat16 assumed."""
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


@functools.cache
def this_machine() -> Device:
    """This CPU's flags and the active backend's first GPU (imports keras and the backend)."""
    from flexunet_k3.backend import gpu_capability

    return Device(this_cpu_flags(), gpu_capability())


def policy(requested: str) -> str:
    """The Keras policy name for train.precision `requested` on this machine."""
    return requested if requested != "auto" else resolve_precision(requested, this_machine())[0]
