"""tunesmith.bench.machine: every benchmark table names the CPU, its bf16 ISA and the wait setting."""

from __future__ import annotations

import os

from tunesmith.bench.machine import ISA_FLAGS, describe, one_line


def test_describe_reads_the_cpu_and_names_the_wait_setting():
    m = describe()
    assert m["cores"] == os.cpu_count() and m["torch_threads"] >= 1
    assert set(m["isa"]) <= set(ISA_FLAGS)
    if os.path.exists("/proc/cpuinfo"):
        assert m["cpu"] != "unknown CPU"
    assert m["omp_wait"].startswith(("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "libgomp default"))


def test_one_line_says_when_there_is_no_bf16_isa():
    m = {
        "cpu": "AMD EPYC 7B13", "isa": ["avx2"], "cores": 2, "torch_threads": 2,
        "omp_wait": "GOMP_SPINCOUNT=1000", "torch": "2.13.0", "onednn": "3.12.0",
    }  # fmt: skip
    assert one_line(m) == (
        "AMD EPYC 7B13 | no bf16 ISA | 2 cores, 2 threads, GOMP_SPINCOUNT=1000 | "
        "torch 2.13.0, oneDNN 3.12.0"
    )
    assert "amx_bf16" in one_line({**m, "isa": ["avx512_bf16", "amx_tile", "amx_bf16"]})


def test_a_onednn_isa_cap_is_named(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    m = describe()
    assert m["onednn_isa_cap"] == "AVX512_CORE_BF16"
    assert "(oneDNN capped at AVX512_CORE_BF16)" in one_line(m)
