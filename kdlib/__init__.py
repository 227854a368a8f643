"""kdlib: knowledge distillation for semantic segmentation, after the report in
``shared/reference/kd-segmentation-report.md`` (student, teacher, losses, data, trainer)."""

__version__ = "0.1.0"

from . import cpu_kernels

cpu_kernels.pin()  # before torch computes anything: the same kernels, so the same floats, on every host
