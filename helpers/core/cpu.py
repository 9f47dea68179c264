"""What this CPU can do, in one line to print beside every speed figure.

Machines of one kind differ: one has AVX-512 with BF16 and VNNI, another only AVX2, and
the fastest embedding precision follows (OpenVINO runs bf16 only with AVX-512 BF16 or AMX,
and falls back to fp32 elsewhere). So figures never assume an instruction set: they name it.

    from helpers.core.cpu import cpu_info
    print(cpu_info())        # AMD EPYC, 2 cores: AVX2, FMA (no AVX-512, no AMX)

Reads /proc/cpuinfo (Linux); elsewhere the model is ``platform.processor()`` and the flags
are unknown. Imports the standard library only.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# The flags that decide speed here, in the order they are named (Linux /proc/cpuinfo names).
SPEED_FLAGS = {
    "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16", "avx_vnni": "AVX-VNNI", "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8",
}


@dataclass(frozen=True)
class CPUInfo:
    model: str
    cores: int
    flags: frozenset[str]  # the SPEED_FLAGS present (empty when unknown)
    known: bool = True     # False: no /proc/cpuinfo, so the flags are not known

    @property
    def bf16(self) -> bool:
        """Native bf16 arithmetic (what OpenVINO's bf16 needs)."""
        return bool(self.flags & {"avx512_bf16", "amx_bf16"})

    @property
    def vnni(self) -> bool:
        """8-bit dot products in one instruction (fast int8)."""
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})

    def __str__(self) -> str:
        if not self.known:
            return f"{self.model}, {self.cores} cores: instruction sets unknown"
        names = [v for k, v in SPEED_FLAGS.items() if k in self.flags]
        missing = [name for flag, name in (("avx512f", "AVX-512"), ("amx_tile", "AMX"))
                   if flag not in self.flags]
        tail = f" (no {', no '.join(missing)})" if missing else ""
        return f"{self.model}, {self.cores} cores: {', '.join(names) or 'no AVX2'}{tail}"


def parse_cpuinfo(text: str, cores: int | None = None) -> CPUInfo:
    """CPUInfo from the text of /proc/cpuinfo (its first processor)."""
    model, flags = "unknown CPU", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return CPUInfo(model, cores or os.cpu_count() or 1, frozenset(flags & SPEED_FLAGS.keys()))


@lru_cache(maxsize=1)
def cpu_info() -> CPUInfo:
    """This machine's CPU (read once)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return CPUInfo(platform.processor() or platform.machine(), os.cpu_count() or 1,
                       frozenset(), known=False)
