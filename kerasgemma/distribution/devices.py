"""Find the accelerators JAX sees and how much memory each one has."""

import dataclasses
import os

import jax


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """The devices a run can use, all of one platform.

    Args:
        platform: str. "tpu", "gpu" or "cpu".
        count: int. Devices across all hosts (`jax.device_count()`).
        memory_bytes: int. Memory of one device.
        kind: str. `device.device_kind`, e.g. "TPU v3" or "NVIDIA H100 80GB HBM3".
        processes: int. JAX processes (hosts) taking part.
        memory_source: str. Where `memory_bytes` came from.
        host_memory_bytes: int or None. Host RAM a run may use to load and
            quantize the base (`kerasgemma.distribution.memory`); None: unknown.

    Example:
    >>> info = DeviceInfo("tpu", 8, 16 * 2**30, "TPU v3")
    >>> info.describe()
    '8 × TPU v3 (tpu), 16.0 GiB each, 1 process'
    """

    platform: str
    count: int
    memory_bytes: int
    kind: str = ""
    processes: int = 1
    memory_source: str = "given"
    host_memory_bytes: int | None = None

    def describe(self):
        processes = f"{self.processes} process" + ("es" if self.processes > 1 else "")
        return (
            f"{self.count} × {self.kind or self.platform} ({self.platform}), "
            f"{self.memory_bytes / 2**30:.1f} GiB each, {processes}"
        )


def _host_memory_bytes():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_host_memory():
    """Bytes of host RAM free for this process now: Linux's MemAvailable, else the physical RAM.

    MemAvailable (free memory plus the page cache the kernel can drop) is
    what loading a model can still take; other systems report only the total.

    Example:
    >>> 0 < available_host_memory() <= _host_memory_bytes()
    True
    """
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _host_memory_bytes()


def detect_devices():
    """Describe JAX's default devices (TPU, else GPU, else CPU).

    Per-device memory is the allocator limit `device.memory_stats()` reports on
    GPU and TPU. CPU devices report nothing, so host memory is split evenly
    between them (several CPU "devices" come from
    `XLA_FLAGS=--xla_force_host_platform_device_count=N` and share one RAM).

    Example:
    >>> info = detect_devices()
    >>> info.platform in ("cpu", "gpu", "tpu") and info.count >= 1
    True
    """
    devices = jax.devices()
    # Another host's device has no memory stats to give (JaxRuntimeError
    # "MemoryStats is only supported for addressable PjRt devices").
    first = jax.local_devices()[0]
    stats = first.memory_stats() or {}
    if stats.get("bytes_limit"):
        memory, source = int(stats["bytes_limit"]), "device.memory_stats()"
    else:
        local = max(jax.local_device_count(), 1)
        memory, source = _host_memory_bytes() // local, "host RAM / local devices"
    return DeviceInfo(
        platform=first.platform,
        count=len(devices),
        memory_bytes=memory,
        kind=getattr(first, "device_kind", ""),
        processes=jax.process_count(),
        memory_source=source,
        host_memory_bytes=available_host_memory(),
    )
