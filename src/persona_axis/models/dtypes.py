"""Which dtype suits the host: what ``--dtype auto`` means for a build.

bfloat16 halves the memory of the weights, but it is only faster than float32 where the hardware
multiplies bfloat16 natively: Intel AMX (CPU flag ``amx_bf16``), AVX-512 with bfloat16
(``avx512_bf16``), or a CUDA GPU that supports it. Elsewhere (e.g. AVX2-only CPUs) PyTorch
converts every bfloat16 product in software and generation runs at about half the speed of
float32 (docs/axis-quality.md, "dtype"). ``auto`` therefore picks bfloat16 where the hardware
is fast at it and float32 elsewhere, and says why; the build records the choice in its
manifest. Explicit dtypes pass through unchanged.

The CPU flags come from ``/proc/cpuinfo`` (Linux); where it cannot be read, no fast bfloat16
is assumed. Tests inject ``flags`` and ``cuda_bfloat16`` instead of needing such hardware.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from persona_axis.errors import PersonaAxisError

DTYPES = ("float32", "bfloat16", "float16")
"""The dtypes a model can be loaded in, besides ``auto``."""

FAST_BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (as /proc/cpuinfo spells them) of native bfloat16 arithmetic, best first."""

AUTO_PICKS_BFLOAT16 = True
"""Whether ``auto`` may pick bfloat16 at all: the quick build's quality metrics in bfloat16
and float32 agreed within their bootstrap intervals, and on a host with ``avx512_bf16`` the
bfloat16 build was 1.6× faster (docs/axis-quality.md, "dtype")."""

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class DtypeChoice:
    """A dtype to load a model in (``float32``, ``bfloat16`` or ``float16``), the dtype asked
    for (one of those or ``auto``) and why this one, in words recorded in the manifest."""

    dtype: str
    requested: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"dtype": self.dtype, "requested": self.requested, "reason": self.reason}


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags from the first ``flags`` line of ``cpuinfo``; empty where the
    file is missing or unreadable (not Linux, a sandbox)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cuda_supports_bfloat16() -> bool:
    """Whether a CUDA GPU is visible here and supports bfloat16."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def fast_bfloat16(
    device: str = "cpu",
    *,
    flags: Iterable[str] | None = None,
    cuda_bfloat16: bool | None = None,
) -> str | None:
    """Why ``device`` ("cpu" or "cuda") multiplies bfloat16 natively, e.g. "cpu has amx_bf16",
    or None when it does not. ``flags`` and ``cuda_bfloat16`` default to this host's."""
    if device == "cuda":
        supported = cuda_supports_bfloat16() if cuda_bfloat16 is None else cuda_bfloat16
        return "cuda supports bfloat16" if supported else None
    have = cpu_flags() if flags is None else frozenset(flags)
    for flag in FAST_BFLOAT16_FLAGS:
        if flag in have:
            return f"cpu has {flag}"
    return None


def choose_dtype(
    requested: str,
    device: str = "cpu",
    *,
    flags: Iterable[str] | None = None,
    cuda_bfloat16: bool | None = None,
) -> DtypeChoice:
    """The dtype to load a model in for ``requested`` on ``device`` ("cpu" or "cuda").

    ``auto`` gives bfloat16 where :func:`fast_bfloat16` finds native support, float32
    elsewhere; any other name must be one of :data:`DTYPES` and is kept. ``flags`` and
    ``cuda_bfloat16`` stand in for the host's (tests)."""
    if requested != "auto":
        if requested not in DTYPES:
            raise PersonaAxisError(f"Unknown dtype {requested!r}; use {', '.join(DTYPES)} or auto.")
        return DtypeChoice(requested, requested, "asked for")
    if not AUTO_PICKS_BFLOAT16:
        return DtypeChoice(
            "float32", "auto", "auto: float32 everywhere (docs/axis-quality.md, 'dtype')"
        )
    why = fast_bfloat16(device, flags=flags, cuda_bfloat16=cuda_bfloat16)
    if why is not None:
        return DtypeChoice("bfloat16", "auto", f"auto: {why}")
    wanted = " or ".join(FAST_BFLOAT16_FLAGS) if device != "cuda" else "bfloat16 support"
    return DtypeChoice("float32", "auto", f"auto: {device} has no {wanted}")
