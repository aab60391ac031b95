"""What this CPU can do, as far as the choice of an inference precision cares.

bf16 inference is only worth having (and only offered) on CPUs with bf16 matrix hardware:
AMX (``amx_tile`` + ``amx_bf16``) or AVX512-BF16 (``avx512_bf16``). Elsewhere it is
emulated, slower than fp32. The flags come from /proc/cpuinfo (Linux); elsewhere they are
unknown and the caller asks its runtime instead. `cpu_features` is cheap and pure given
its text, so tests pass a fake /proc/cpuinfo or a hand-made `CpuFeatures`.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
#: The flags `CpuFeatures` records (Linux /proc/cpuinfo spelling).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model name and which of `FLAGS` it has (``known``: the flags were read)."""

    model_name: str
    avx2: bool = False
    avx512f: bool = False
    avx512_bf16: bool = False
    amx_tile: bool = False
    amx_bf16: bool = False
    known: bool = True

    @property
    def amx(self) -> bool:
        """AMX tiles with the bf16 instructions (Sapphire Rapids and later)."""
        return self.amx_tile and self.amx_bf16

    @property
    def bf16(self) -> bool:
        """bf16 in hardware: AMX or AVX512-BF16. False when the flags are unknown."""
        return self.amx or self.avx512_bf16

    def flags(self) -> list[str]:
        """The recorded flags this CPU has, in `FLAGS` order."""
        return [flag for flag in FLAGS if getattr(self, flag)]

    def describe(self) -> str:
        """ "AMD EPYC (avx2)" — the model name and the recorded flags it has."""
        if not self.known:
            return f"{self.model_name} (CPU flags unknown)"
        return f"{self.model_name} ({', '.join(self.flags()) or 'none of ' + ', '.join(FLAGS)})"


def parse_cpuinfo(text: str) -> CpuFeatures:
    """`CpuFeatures` from the text of /proc/cpuinfo (the first processor's lines)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block is enough (all cores are alike)
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    # x86 spells them "flags"; ARM "Features" (no bf16 kernels for ARM here: all False).
    flags = set(fields.get("flags", fields.get("features", "")).split())
    name = fields.get("model name") or fields.get("cpu model") or _fallback_name()
    return CpuFeatures(
        model_name=name,
        known="flags" in fields or "features" in fields,
        **{flag: flag in flags for flag in FLAGS},
    )


def cpu_features(cpuinfo: Path | None = None) -> CpuFeatures:
    """This machine's `CpuFeatures` (``known=False`` where /proc/cpuinfo cannot be read).

    ``cpuinfo`` defaults to the module's `CPUINFO`, looked up at each call, so a test can
    point the detection itself at a fake file (e.g. a bf16 CPU's) for every caller at once.
    """
    try:
        text = (cpuinfo or CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return CpuFeatures(model_name=_fallback_name(), known=False)
    return parse_cpuinfo(text)


def _fallback_name() -> str:
    return platform.processor() or platform.machine() or "unknown CPU"
