"""helpers.core.cpu: the line printed beside every speed figure names what the CPU has."""

from __future__ import annotations

from helpers.core.cpu import cpu_info, parse_cpuinfo

AVX2_ONLY = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2
processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2
"""
AVX512_BF16 = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu avx fma avx2 avx512f avx512dq avx512_vnni avx512_bf16 avx512_vbmi2
"""


def test_avx2_only_machine_has_no_bf16():
    info = parse_cpuinfo(AVX2_ONLY, cores=2)
    assert info.flags == {"avx2", "fma"} and not info.bf16 and not info.vnni
    assert str(info) == "AMD EPYC, 2 cores: AVX2, FMA (no AVX-512, no AMX)"


def test_avx512_bf16_machine():
    info = parse_cpuinfo(AVX512_BF16, cores=2)
    assert info.bf16 and info.vnni
    assert str(info) == ("AMD EPYC 9R14, 2 cores: AVX2, FMA, AVX-512, AVX-512 VNNI, "
                         "AVX-512 BF16 (no AMX)")


def test_this_machine_is_read():
    info = cpu_info()
    assert info.cores >= 1 and info.model and str(info)
    assert info.flags <= {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni",
                          "amx_tile", "amx_bf16", "amx_int8"}


def test_recall_qps_plot_names_the_cpu():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from helpers.evaluate.sweep import plot_recall_qps

    t = pd.DataFrame({"knob": ["nprobe"] * 2, "value": [1, 4], "recall": [0.5, 0.9],
                      "qps": [1000.0, 300.0]})
    ax = plot_recall_qps({"ivf": t}, exact_qps=100.0)
    texts = [x.get_text() for x in ax.texts]
    assert f"measured on {cpu_info()}" in texts
