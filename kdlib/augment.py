"""The report's Table 2 augmentation, applied to a whole batch at once.

Each sample draws its own parameters (:func:`sample_params`, cheap, in the DataLoader worker,
from the sample's seed); :func:`augment_batch` then applies them to the batch in a handful of
tensor operations on the training device: one ``grid_sample`` carries the flip and the affine
warp for image, mask and (when distilling from a cache) the teacher's logits together, and the
colour jitter runs vectorised over the batch. Per-sample ``transforms.v2`` pipelines cost
~3.5 ms per 64 px image on a CPU core, as much as a third of the student's training step;
this costs a few ms per batch.

The semantics are torchvision's (``tests/test_augment.py`` checks them against
``transforms.v2.functional`` sample by sample):

- flip (p=0.5), then one affine warp: rotation ±10°, translation ±10 % (whole pixels), scale
  0.9-1.1, shear ±5° on each axis, about the image centre; nearest-neighbour for image and
  mask, as ``v2.RandomAffine``'s default; exposed pixels are 0 in the image and void (255)
  in the mask. Teacher logits (any resolution: they are stored at the teacher's stride) are
  sampled bilinearly by the same map, which also upsamples them to the image size exactly as
  the teacher's own bilinear upsampling does (``align_corners=False``, edges clamped);
- colour jitter (brightness, contrast, saturation 0.2, hue 0.1) in a random order per sample,
  as ``v2.ColorJitter``; on the image only: the mask and the teacher's target keep no trace of
  it;
- then ``ToDtype(float32, scale=True)`` and the ImageNet normalisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .conventions import MEAN, STD, VOID, upsample_logits

# Table 2 of the report.
TABLE2 = {
    "flip_p": 0.5,
    "degrees": 10.0,
    "translate": 0.1,
    "scale": (0.9, 1.1),
    "shear": 5.0,
    "brightness": 0.2,
    "contrast": 0.2,
    "saturation": 0.2,
    "hue": 0.1,
}
# geometric: flip and warp, no colour jitter; color: colour jitter, no flip or warp; none: identity
MODES = ("table2", "geometric", "color", "none")
# one row of parameters per sample
FIELDS = (
    "flip",
    "angle",
    "tx",
    "ty",
    "scale",
    "shear_x",
    "shear_y",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "op0",
    "op1",
    "op2",
    "op3",
)
IDENTITY = torch.tensor([0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 2, 3], dtype=torch.float32)


def sample_params(mode: str, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample's parameters (a row of ``FIELDS``), drawn from ``generator`` (the trainer
    seeds one per sample and epoch) or from torch's global generator."""
    if mode not in MODES:
        raise ValueError(f"augment={mode!r}: choose one of {MODES}")
    if mode == "none":  # no draw at all: the batch is only normalised
        return IDENTITY.clone()
    t = TABLE2
    u = torch.rand(11, generator=generator).tolist()  # uniform [0, 1) draws, mapped onto each range
    p = IDENTITY.tolist()
    if mode in ("table2", "geometric"):
        p[0] = float(u[0] < t["flip_p"])
        p[1] = t["degrees"] * (2 * u[1] - 1)
        p[2] = float(round(t["translate"] * width * (2 * u[2] - 1)))
        p[3] = float(round(t["translate"] * height * (2 * u[3] - 1)))
        p[4] = t["scale"][0] + (t["scale"][1] - t["scale"][0]) * u[4]
        p[5] = t["shear"] * (2 * u[5] - 1)
        p[6] = t["shear"] * (2 * u[6] - 1)
    if mode in ("table2", "color"):
        for i, name in enumerate(("brightness", "contrast", "saturation", "hue")):
            p[7 + i] += t[name] * (2 * u[7 + i] - 1)
        p[11:15] = torch.randperm(4, generator=generator).tolist()
    return torch.tensor(p, dtype=torch.float32)


def warp_grid(params: torch.Tensor, height: int, width: int, device=None) -> torch.Tensor:
    """The sampling grid (N×H×W×2, ``grid_sample``'s normalised coordinates) of flip-then-affine.

    In pixel coordinates centred on the image (x right, y down) the affine maps a point by
    ``T·R(a)·S(s)·SHy(sy)·SHx(sx)``; each output pixel therefore reads the input at the inverse
    map of its centre, and a flip before it negates the input's x. (A few scalars per sample:
    plain Python is faster here than tiny tensor operations.) ``params`` are read on the host;
    the grid is built on ``device`` (default: the parameters')."""
    thetas = []
    for flip, angle, tx, ty, scale, shear_x, shear_y, *_ in params.tolist():
        rot, sx, sy = math.radians(angle), math.radians(shear_x), math.radians(shear_y)
        # forward rotation-shear without scale: [[a, b], [c, d]], determinant 1
        a = math.cos(rot - sy) / math.cos(sy)
        b = -(a * math.tan(sx) + math.sin(rot))
        c = math.sin(rot - sy) / math.cos(sy)
        d = math.cos(rot) - c * math.tan(sx)
        i00, i01, i10, i11 = d / scale, -b / scale, -c / scale, a / scale  # the inverse
        o0, o1 = -(i00 * tx + i01 * ty), -(i10 * tx + i11 * ty)
        if flip > 0.5:
            i00, i01, o0 = -i00, -i01, -o0
        # pixels → normalised coordinates: x / (W/2), y / (H/2), on both sides of the map
        thetas.append([[i00, i01 * height / width, 2 * o0 / width], [i10 * width / height, i11, 2 * o1 / height]])
    theta = torch.tensor(thetas, dtype=torch.float32, device=params.device if device is None else device)
    return F.affine_grid(theta, [len(thetas), 1, height, width], align_corners=False)


def _gray(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(img, other, factor):
    return (factor * img + (1 - factor) * other).clamp_(0, 1)


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """N×3×H×W RGB in [0, 1] → hue (in turns), saturation, value."""
    r, g, b = img[:, 0], img[:, 1], img[:, 2]
    value = torch.maximum(torch.maximum(r, g), b)
    delta = value - torch.minimum(torch.minimum(r, g), b)
    inv = 1.0 / delta.clamp_min(1e-12)
    hue = torch.where(value == r, (g - b) * inv, torch.where(value == g, (b - r) * inv + 2, (r - g) * inv + 4))
    hue = (hue * (delta > 0) / 6).remainder_(1.0)
    saturation = delta / value.clamp_min(1e-12)
    return torch.stack([hue, saturation, value], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel n = V - V·S·clamp(min(k, 4 - k), 0, 1) with
    k = (n + 6H) mod 6 and n = 5, 3, 1 for R, G, B."""
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
    k = (n + 6 * h).remainder(6)
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def _brightness(img, f):
    return (img * f).clamp_(0, 1)


def _contrast(img, f):
    return _blend(img, _gray(img).mean((1, 2, 3), keepdim=True), f)


def _saturation(img, f):
    return _blend(img, _gray(img), f)


def _hue(img, shift):
    hsv = rgb_to_hsv(img)
    hsv[:, 0] = (hsv[:, 0] + shift[:, 0, 0, 0][:, None, None]) % 1.0
    return hsv_to_rgb(hsv)


_JITTER = ((7, _brightness, 1.0), (8, _contrast, 1.0), (9, _saturation, 1.0), (10, _hue, 0.0))


def color_jitter(img: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1]; each sample's four adjustments in its own order (``op0..op3``).
    Round k applies, to each group of samples whose k-th adjustment is the same, that
    adjustment at once (identity factors skipped). ``params`` stay on the host, where the
    grouping reads them; only the factors travel to the images' device."""
    params = params.cpu()
    rows = params[:, 7:15].tolist()
    for k in range(4):
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            op = int(row[4 + k])
            if row[op] != _JITTER[op][2]:
                groups.setdefault(op, []).append(i)
        for op, members in groups.items():
            column, fn, _ = _JITTER[op]
            idx = torch.tensor(members, device=img.device)
            factor = params[members, column].view(-1, 1, 1, 1).to(img.device, img.dtype)
            img[idx] = fn(img[idx], factor)
    return img


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, params: torch.Tensor, teacher: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """uint8 images N×3×H×W, masks N×H×W, parameters N×15 (and teacher logits N×C×h×w)
    → normalised float images, long masks (255 where the warp exposed pixels), and the
    teacher's logits warped and upsampled to H×W. The parameters are read on the host (keep
    them there: on a GPU a read of a device tensor waits for the device)."""
    params = params.cpu()
    n, _, height, width = images.shape
    if (params[:, :7] == IDENTITY[:7].to(params.device)).all():  # no flip, no warp: nothing to resample
        grid, img, mask = None, images.float() / 255, masks.long()
    else:
        grid = warp_grid(params, height, width, device=images.device)
        ones = torch.ones_like(masks, dtype=torch.float32)[:, None]
        stacked = torch.cat([images.float() / 255, masks[:, None].float(), ones], 1)
        warped = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        inside = warped[:, 4:5] > 0.5
        img = torch.where(inside, warped[:, :3], torch.zeros(()))
        mask = torch.where(inside[:, 0], warped[:, 3], torch.full((), float(VOID))).round().long()
    if (params[:, 7:11] != IDENTITY[7:11].to(params.device)).any():
        img = color_jitter(img, params)
    mean = torch.tensor(MEAN, device=img.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=img.device).view(1, 3, 1, 1)
    img = (img - mean) / std
    warped_teacher = None
    if teacher is not None and grid is None:  # the identity warp is the teacher's own upsampling
        warped_teacher = upsample_logits(teacher.float(), (height, width))
    elif teacher is not None:
        warped_teacher = F.grid_sample(
            teacher.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
    return img, mask, warped_teacher


def prepare_batch(batch: dict, device, channels_last: bool = False):
    """A loader's batch of samples (:class:`kdlib.data.SegmentationFolder` items: uint8 images,
    uint8 masks, each sample's augmentation parameters, and cached teacher logits when the
    data set serves them) as the networks take it: on ``device``, augmented by each sample's
    parameters (the identity for an evaluation split: resize was all), normalised. Returns
    (images N×3×H×W float, masks N×H×W long, teacher logits N×C×H×W or None)."""
    teacher = batch.get("teacher")
    x, y, t = augment_batch(
        batch["image"].to(device, non_blocking=True),
        batch["mask"].to(device, non_blocking=True),
        batch["params"],  # read on the host (augment_batch)
        None if teacher is None else teacher.to(device, non_blocking=True),
    )
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y, t


def prepare_sample(sample: dict):
    """One sample as :func:`prepare_batch` prepares it, on the CPU: (image 3×H×W, mask H×W)."""
    from torch.utils.data import default_collate

    x, y, _ = prepare_batch(default_collate([sample]), "cpu")
    return x[0], y[0]
