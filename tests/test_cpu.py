"""CPU feature detection: /proc/cpuinfo flags that decide whether bf16 is on offer."""

from __future__ import annotations

from pathlib import Path

from lazyembed.cpu import FLAGS, CpuFeatures, cpu_features, parse_cpuinfo

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx avx2 fma

processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx avx2 fma
"""

SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_avx2_only_cpu_has_no_bf16() -> None:
    cpu = parse_cpuinfo(EPYC)
    assert cpu == CpuFeatures(model_name="AMD EPYC", avx2=True)
    assert not cpu.bf16 and not cpu.amx
    assert cpu.describe() == "AMD EPYC (avx2)"


def test_amx_cpu_has_bf16() -> None:
    cpu = parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert cpu.model_name == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu.amx and cpu.bf16
    assert cpu.flags() == list(FLAGS)


def test_avx512_bf16_without_amx_is_bf16() -> None:
    cpu = parse_cpuinfo("model name\t: Zen 4\nflags\t: avx2 avx512f avx512_bf16\n")
    assert cpu.bf16 and not cpu.amx


def test_amx_tiles_without_bf16_instructions_are_not_bf16() -> None:
    cpu = parse_cpuinfo("model name\t: x\nflags\t: avx2 amx_tile amx_int8\n")
    assert not cpu.bf16


def test_only_the_first_processor_block_is_read() -> None:
    text = "model name\t: A\nflags\t: avx2\n\nmodel name\t: B\nflags\t: amx_tile amx_bf16\n"
    cpu = parse_cpuinfo(text)
    assert cpu.model_name == "A" and not cpu.bf16


def test_unreadable_cpuinfo_means_unknown_flags(tmp_path: Path) -> None:
    cpu = cpu_features(tmp_path / "missing")
    assert not cpu.known and not cpu.bf16
    assert cpu.model_name
    assert "unknown" in cpu.describe()
    assert not parse_cpuinfo("").known


def test_this_machine_matches_proc_cpuinfo() -> None:
    path = Path("/proc/cpuinfo")
    cpu = cpu_features()
    if not path.exists():
        assert not cpu.known
        return
    first = path.read_text().split("\n\n")[0]
    flags = set(next(line for line in first.splitlines() if line.startswith("flags")).split())
    assert cpu.known
    assert cpu.flags() == [flag for flag in FLAGS if flag in flags]
    assert cpu.model_name in first
