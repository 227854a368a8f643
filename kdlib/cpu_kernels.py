"""Which CPU kernels torch runs: the same on every x86-64 machine, so that a run is the same run.

PyTorch picks its vectorised code by the processor it finds: ATen's element-wise and reduction
kernels (AVX2 or AVX-512), oneDNN's convolutions and MKL's matrix products. Each of them adds
numbers in an order of its own, so one run's floats drift apart on two machines from the first
step on and end at another val mIoU (docs/reliability.md gives what was measured). Pairing runs
of two machines then adds that drift to every difference a verdict reads.

:func:`pin` fixes all three to their AVX2 code, which every x86-64 machine this project trains on
has: ``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA`` and MKL's conditional numerical
reproducibility (``MKL_CBWR``). It only sets what the environment leaves unset, and only where the
processor has AVX2; ``KDLIB_CPU_KERNELS=native`` leaves torch its own choice. Torch reads these
variables when it first computes, not when it is imported, so ``import kdlib`` pins them as long
as nothing ran a tensor operation before it; :func:`in_force` reports what the process actually
runs, and every run's ``config.json`` records it (``environment.cpu_kernels``).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

OPT_OUT = "KDLIB_CPU_KERNELS"  # "native": leave torch's choice of kernels alone
PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2,STRICT",
}


def _has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return " avx2 " in f" {Path('/proc/cpuinfo').read_text()} ".replace("\n", " ")
    except OSError:  # not Linux: ask torch (which computes nothing to answer)
        import torch

        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def pin() -> dict[str, str]:
    """Set :data:`PINS` in ``os.environ`` where unset (an x86-64 processor with AVX2, and
    ``KDLIB_CPU_KERNELS`` not ``native``); returns the pins this call set."""
    if os.environ.get(OPT_OUT, "").lower() == "native" or not _has_avx2():
        return {}
    set_now = {k: v for k, v in PINS.items() if k not in os.environ}
    os.environ.update(set_now)
    return set_now


def in_force() -> dict:
    """What this process runs: ATen's kernel level as torch reports it, and the pins' values."""
    import torch

    return {"aten": torch.backends.cpu.get_cpu_capability()} | {k: os.environ.get(k) for k in PINS}


def kernel_class(environment: dict) -> str:
    """The class of a run's arithmetic, from its ``config.json``'s ``environment``: the CPU
    kernels it ran (or its GPU) and its torch. Runs of one class compute the same floats, so a
    paired difference between them holds no host drift; a run recorded before kdlib pinned the
    kernels is classed by its host's kernel name, the only trace it left. (Speed is another
    matter: :func:`kdlib.conditions.with_compute` compares CPU time on one host only.)"""
    kernels = environment.get("cpu_kernels")
    torch_version = environment.get("torch")
    if environment.get("cuda"):
        return f"{environment['cuda']}, torch {torch_version}"
    if kernels is None:
        return f"unpinned, {environment.get('platform')}, torch {torch_version}"
    pinned = all(kernels.get(k) == v for k, v in PINS.items())
    return f"{'pinned' if pinned else 'native'} {kernels.get('aten')}, torch {torch_version}"
