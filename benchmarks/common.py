"""Shared helpers for benchmark scripts: A/B alternation with medians, machine facts, RSS."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch


def alternate(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Run every variant once per round, in rotating order; median seconds per variant."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> str:
    """One line describing where the numbers came from."""
    return (
        f"{os.cpu_count()} CPU cores ({cpu_name()}, torch kernels "
        f"{torch.backends.cpu.get_cpu_capability()}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (the architecture where there is none)."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    return psutil.Process().memory_info().rss / 2**20


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs`` 5), so a later
    :func:`peak_rss_mib` covers only what runs after this call, not model loading."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """Peak resident set size since the last :func:`reset_peak_rss`, MiB (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")
