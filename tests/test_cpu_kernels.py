"""The CPU kernels are pinned on import, so that a run computes the same floats on every x86-64
host; what a process runs is recorded, and a run's machine class read from it."""

import json
import os
import subprocess
import sys

import pytest

from kdlib import cpu_kernels

# What a fresh process sees: a child of this one, without the pins this process already set.
PROBE = (
    "import json, os, kdlib, torch; torch.ones(3).sum();"
    "print(json.dumps({'env': {k: os.environ.get(k) for k in kdlib.cpu_kernels.PINS},"
    " 'aten': torch.backends.cpu.get_cpu_capability()}))"
)


def _probe(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in cpu_kernels.PINS and k != cpu_kernels.OPT_OUT}
    out = subprocess.run([sys.executable, "-c", PROBE], env=clean | env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


needs_avx2 = pytest.mark.skipif(not cpu_kernels._has_avx2(), reason="the pins apply to x86-64 with AVX2 only")


@needs_avx2
def test_import_pins_avx2_kernels_in_a_fresh_process():
    seen = _probe()
    assert seen["env"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}
    assert seen["aten"] == "AVX2"  # on an AVX-512 host too: torch read the pin


@needs_avx2
def test_a_setting_of_the_user_wins_and_native_opts_out():
    assert _probe(ATEN_CPU_CAPABILITY="default")["aten"] == "DEFAULT"
    native = _probe(KDLIB_CPU_KERNELS="native")
    assert native["env"] == dict.fromkeys(cpu_kernels.PINS)


def test_kernel_class_by_hand():
    pinned = {"aten": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT"}
    assert cpu_kernels.kernel_class({"torch": "2.14.1", "cpu_kernels": pinned}) == "pinned AVX2, torch 2.14.1"
    native = dict(pinned, ATEN_CPU_CAPABILITY=None, aten="AVX512")
    assert cpu_kernels.kernel_class({"torch": "2.14.1", "cpu_kernels": native}) == "native AVX512, torch 2.14.1"
    old = {"torch": "2.14.1", "platform": "Linux-6.18-fc-v1-x86_64"}
    assert cpu_kernels.kernel_class(old) == "unpinned, Linux-6.18-fc-v1-x86_64, torch 2.14.1"
    gpu = {"torch": "2.14.1", "cuda": "NVIDIA H100", "cpu_kernels": pinned}
    assert cpu_kernels.kernel_class(gpu) == "NVIDIA H100, torch 2.14.1"
