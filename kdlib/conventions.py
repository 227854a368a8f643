"""What every module agrees on: the label space, the input normalisation, and how logits are
brought to the input's size. One home for each, so that data, models, losses, metrics and
plots cannot drift apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F

NUM_CLASSES = 21  # VOC's 20 object classes and background; the shapes benchmark has as many
VOID = 255  # pixels no loss or metric counts (VOC's object borders, warped-in image borders)

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# The teacher's input normalisation (ImageNet statistics); the student shares it.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened), as in the devkit's PNGs."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Logits at a network's output stride → input size, as torchvision's segmentation
    models do it (bilinear, ``align_corners=False``)."""
    return F.interpolate(logits.contiguous(), size=tuple(size), mode="bilinear", align_corners=False)
