"""Which integer GEMM path ONNX Runtime's MLAS takes on this CPU, read from the CPU's feature flags. Torch-free.

    isa = detect_cpu_isa()          # CpuIsa(path="AVX-512 VNNI", kernel="vpdpbusds (U8S8, zmm)", ...)

MLAS picks its U8S8 (uint8 activations x int8 weights) kernel at start-up from CPUID, the most capable first: AMX
(``amx_int8``; tile state granted by the OS; small GEMMs fall back to the AVX-512 VNNI kernel), AVX-512 VNNI
(``avx512_vnni``: ``vpdpbusds``), AVX-VNNI (``avx_vnni``: the same instruction on ymm), AVX-512 core (``avx512bw``:
``vpmaddubsw`` + ``vpmaddwd``), AVX2 (``avx2``: the same on ymm), else SSE4.1. The ``vpmaddubsw`` paths add two
u8 x s8 products into a saturating int16, so without VNNI ONNX Runtime advises 7-bit weights (``reduce_range``).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

#: Where Linux lists the CPU's feature flags.
CPUINFO = Path("/proc/cpuinfo")

#: (flag, path, kernel, reduce_range), the most capable first: MLAS's own order for U8S8 on x86-64.
U8S8_PATHS: tuple[tuple[str, str, str, bool], ...] = (
    ("amx_int8", "AMX", "AMX tiles (tdpbusd); small GEMMs on the AVX-512 VNNI kernel", False),
    ("avx512_vnni", "AVX-512 VNNI", "vpdpbusds on zmm", False),
    ("avx_vnni", "AVX-VNNI", "vpdpbusds on ymm", False),
    ("avx512bw", "AVX-512 core", "vpmaddubsw + vpmaddwd on zmm (int16 saturation)", True),
    ("avx2", "AVX2", "vpmaddubsw + vpmaddwd on ymm (int16 saturation)", True),
)
#: The flags reported (the ones that decide the integer and float GEMM paths).
REPORTED_FLAGS = ("amx_tile", "amx_int8", "amx_bf16", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx2", "fma")


@dataclass(frozen=True)
class CpuIsa:
    """The CPU's integer GEMM path as MLAS dispatches U8S8."""

    machine: str  # platform.machine(): x86_64, aarch64, ...
    model: str  # /proc/cpuinfo "model name" ("" when unknown)
    flags: tuple[str, ...]  # the REPORTED_FLAGS the CPU has
    path: str  # "AMX", "AVX-512 VNNI", "AVX-VNNI", "AVX-512 core", "AVX2", "SSE4.1", or "unknown"
    kernel: str  # the instruction doing the u8 x s8 multiply-accumulate
    reduce_range: bool  # whether 7-bit weights are advised (int16-saturating paths)

    def describe(self) -> str:
        """One line: ``"AVX-512 VNNI (vpdpbusds on zmm); flags avx2 avx512_vnni ..."``."""
        return f"{self.path} ({self.kernel}); flags {' '.join(self.flags) or 'none read'}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def read_cpu_flags(cpuinfo: Path = CPUINFO) -> tuple[frozenset[str], str]:
    """(feature flags, model name) of the first CPU listed in ``cpuinfo``; empty when the file does not exist.

    Raises:
        ValueError: the file exists but lists no ``flags`` line (not a Linux x86 cpuinfo).
    """
    if not cpuinfo.is_file():
        return frozenset(), ""
    flags: frozenset[str] | None = None
    model = ""
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and flags is None:
            flags = frozenset(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    if flags is None:
        raise ValueError(f"{cpuinfo} has no 'flags' line; cannot tell which integer GEMM path the CPU has")
    return flags, model


def u8s8_path(flags: frozenset[str], machine: str = "x86_64", model: str = "") -> CpuIsa:
    """The path MLAS takes for U8S8 GEMMs on a CPU with these feature ``flags``."""
    reported = tuple(f for f in REPORTED_FLAGS if f in flags)
    if machine.lower() not in ("x86_64", "amd64", "i686", "x86"):
        return CpuIsa(machine, model, reported, "unknown", f"not x86 ({machine}): MLAS uses its own kernels", False)
    if not flags:
        return CpuIsa(machine, model, reported, "unknown", "no CPU flags could be read", False)
    for flag, path, kernel, reduce_range in U8S8_PATHS:
        if flag in flags:
            return CpuIsa(machine, model, reported, path, kernel, reduce_range)
    return CpuIsa(machine, model, reported, "SSE4.1", "pmaddubsw on xmm (int16 saturation)", True)


def detect_cpu_isa(cpuinfo: Path = CPUINFO) -> CpuIsa:
    """:func:`u8s8_path` of this machine (flags from ``cpuinfo``)."""
    flags, model = read_cpu_flags(cpuinfo)
    return u8s8_path(flags, platform.machine(), model)
