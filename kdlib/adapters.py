"""Trainable modules on the student's side of a KD method (``Method.adapters`` names a builder):
trained, saved and resumed with the student, but no part of it. A leaf of the house (torch
alone), so that the method registry can name its builders without importing the models."""

from __future__ import annotations

import torch
from torch import nn


class Adapters(nn.Module):
    """Trainable modules on the student's side of a KD method (``Method.adapters`` builds them):
    one head per adapted feature level, each from the student's width to the teacher's.
    ``forward(features)`` returns the adapted maps of ``levels``, in that order.

    They train and are saved with the student (``adapters`` in last.pt / best.pt) but are no
    part of it: the student predicts, is evaluated and counts its parameters without them."""

    def __init__(self, heads: list[nn.Module], levels: tuple[int, ...]):
        super().__init__()
        self.heads, self.levels = nn.ModuleList(heads), tuple(levels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(features[level]) for head, level in zip(self.heads, self.levels)]


def level_adapters(student_channels: tuple[int, ...], teacher_channels: tuple[int, ...]) -> Adapters:
    """A trainable 1×1 convolution per feature level, student width -> teacher width: the
    report's projections moved to the student's side (``feature_student``)."""
    heads = [nn.Conv2d(cs, ct, 1) for cs, ct in zip(student_channels, teacher_channels)]
    return Adapters(heads, tuple(range(len(heads))))


def cirkd_projector(student_channels: tuple[int, ...], teacher_channels: tuple[int, ...]) -> Adapters:
    """CIRKD's projection head on the last level (its ``StudentSegContrast.project_head``):
    conv1×1 (no bias) - BN - ReLU - conv1×1 (no bias), student width -> teacher width."""
    cs, ct = student_channels[-1], teacher_channels[-1]
    head = nn.Sequential(
        nn.Conv2d(cs, ct, 1, bias=False), nn.BatchNorm2d(ct), nn.ReLU(inplace=True), nn.Conv2d(ct, ct, 1, bias=False)
    )
    return Adapters([head], (len(student_channels) - 1,))
