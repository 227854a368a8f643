"""The batched Table 2 augmentation against torchvision's own transforms, sample by sample,
and the geometric consistency of teacher maps warped with their images."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from kdlib.augment import IDENTITY, augment_batch, color_jitter, prepare_sample, sample_params, warp_grid
from kdlib.checkpoints import load_model
from kdlib.config import SHAPES_TEACHER
from kdlib.conventions import MEAN, STD, VOID, upsample_logits
from kdlib.data import build_dataset
from kdlib.models import TeacherWrapper


@pytest.fixture(scope="module")
def batch(tiny_shapes):
    ds = build_dataset("shapes", tiny_shapes, "train", train=False, image_size=64)
    pairs = [ds.read(i) for i in range(len(ds))]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]).long()


def _params(mode, n, seed=0, **fixed):
    p = torch.stack([sample_params(mode, 64, 64, torch.Generator().manual_seed(seed * 1000 + i)) for i in range(n)])
    for column, value in fixed.items():
        p[:, ["flip", "angle", "tx", "ty", "scale", "shear_x", "shear_y"].index(column)] = value
    return p


def _torchvision(image, mask, p):
    """The v2 functional calls of the old per-sample pipeline, for one sample."""
    if p[0] > 0.5:
        image, mask = TF.horizontal_flip(image), TF.horizontal_flip(mask)
    kw = dict(
        angle=float(p[1]), translate=[float(p[2]), float(p[3])], scale=float(p[4]), shear=[float(p[5]), float(p[6])]
    )
    return TF.affine(image, **kw, fill=0), TF.affine(mask[None], **kw, fill=VOID)[0]


def _unnormalise(x):
    return x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def test_geometry_equals_torchvision_per_sample(batch):
    images, masks = batch
    for seed in range(3):
        params = _params("geometric", len(images), seed)
        x, y, _ = augment_batch(images, masks, params)
        for i in range(len(images)):
            ref_image, ref_mask = _torchvision(images[i], masks[i], params[i])
            mine = (_unnormalise(x[i : i + 1])[0] * 255).round().to(torch.uint8)
            # nearest-neighbour: a pixel centre landing within float rounding of a boundary
            # may pick the neighbour; anything more is a wrong map
            assert (mine == ref_image).all(0).float().mean() > 0.995
            assert (y[i] == ref_mask).float().mean() > 0.995
        assert (y == VOID).any()  # the warps expose borders, and they are void


def test_colour_jitter_equals_torchvision_in_each_sampled_order(batch):
    images = batch[0].float() / 255
    params = _params("table2", len(images), 5)
    assert len({tuple(p[11:].tolist()) for p in params}) > 1  # several orders in one batch
    out = color_jitter(images.clone(), params)
    for i, p in enumerate(params):
        ref = images[i]
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for k in range(4):
            op = int(p[11 + k])
            ref = ops[op](ref, float(p[7 + op]))
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_same_seed_same_sample_and_identity_is_the_eval_transform(tiny_shapes, batch):
    train = build_dataset("shapes", tiny_shapes, "train", train=True, image_size=64)
    a, b, c = (prepare_sample(train[key]) for key in ((0, 11), (0, 11), (0, 12)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    evaluation = build_dataset("shapes", tiny_shapes, "train", train=False, image_size=64)
    images, masks = batch
    x, y, _ = augment_batch(images, masks, IDENTITY.expand(len(images), -1).clone())
    assert torch.allclose(x, torch.stack([prepare_sample(evaluation[i])[0] for i in range(len(images))]), atol=1e-5)
    assert torch.equal(y, masks)


def test_no_augmentation_is_the_eval_transform_kept_in_memory(tiny_shapes, batch):
    """augment="none": training images are decoded once and only normalised per batch; the
    identity shortcut (no resampling) equals the general warp with an identity grid."""
    train = build_dataset("shapes", tiny_shapes, "train", train=True, image_size=64, augment="none")
    evaluation = build_dataset("shapes", tiny_shapes, "train", train=False, image_size=64)
    assert train.preload() and all(pair is not None for pair in train._decoded)
    for i in range(len(train)):
        (x, y), (ex, ey) = prepare_sample(train[(i, 7)]), prepare_sample(evaluation[i])
        assert torch.allclose(x, ex, atol=1e-5) and torch.equal(y, ey)
    images, masks = batch
    identity = IDENTITY.expand(len(images), -1).clone()
    logits = torch.randn(len(images), 21, 8, 8)
    general = F.grid_sample(
        logits, warp_grid(identity, 64, 64), mode="bilinear", padding_mode="border", align_corners=False
    )
    assert torch.allclose(augment_batch(images, masks, identity, logits)[2], general, atol=1e-5)


@pytest.fixture(scope="module")
def shipped_teacher():
    return TeacherWrapper(load_model(SHAPES_TEACHER))


def test_cached_map_warped_like_its_image(batch, shipped_teacher):
    """The teacher's native-stride logits of the *plain* image, warped by augment_batch, against
    the teacher run on the *warped* image: the same up to rounding for identity and flips
    (the warp upsamples exactly as the teacher does); close for affine warps (a CNN is not
    exactly equivariant, and the image warp is nearest-neighbour); and far apart when the
    map is deliberately warped the wrong way, so the comparison can fail."""
    images, masks = batch
    plain = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    native = shipped_teacher.native_logits(plain)

    def agreement(params, teacher_map_params=None):
        x, y, warped = augment_batch(images, masks, params, native)
        if teacher_map_params is not None:
            warped = augment_batch(images, masks, teacher_map_params, native)[2]
        online = shipped_teacher.teacher_forward(x, with_features=False)["out"]
        valid = y != VOID
        return warped, online, (warped.argmax(1) == online.argmax(1))[valid].float().mean().item()

    # "up to rounding": float32 interpolation of logits of size ~25 errs by ~1e-5
    rounding = 1e-6 * native.abs().max().item()
    identity = IDENTITY.expand(len(images), -1).clone()
    warped, online, _ = agreement(identity)
    assert torch.allclose(warped, upsample_logits(native, (64, 64)), atol=rounding)
    assert torch.allclose(warped, online, atol=1e-4)

    flips = identity.clone()
    flips[:, 0] = 1
    warped, _, _ = agreement(flips)
    assert torch.allclose(warped, upsample_logits(native, (64, 64)).flip(-1), atol=rounding)

    affine = _params("geometric", len(images), 3)
    _, _, right = agreement(affine)
    wrong_way = affine.clone()
    wrong_way[:, 0] = 1 - wrong_way[:, 0]  # flip the map when the image is not, and vice versa
    _, _, wrong = agreement(affine, wrong_way)
    print(f"argmax agreement, cached warp vs online teacher: {right:.3f}; wrong-way warp: {wrong:.3f}")
    assert right > 0.85 and wrong < right - 0.15, (right, wrong)


# The report's Table 2, written out here rather than read from kdlib.augment.TABLE2: (column,
# low, high) of each parameter a training sample draws.
TABLE2_RANGES = (
    ("angle", -10.0, 10.0),  # rotation ±10°
    ("scale", 0.9, 1.1),
    ("shear_x", -5.0, 5.0),
    ("shear_y", -5.0, 5.0),
    ("brightness", 0.8, 1.2),  # factors 1 ± 0.2
    ("contrast", 0.8, 1.2),
    ("saturation", 0.8, 1.2),
    ("hue", -0.1, 0.1),
)


def test_each_augmentation_parameter_covers_its_table2_range_symmetrically(tiny_shapes):
    """4,000 draws as the trainer makes them (a training split, each sample keyed by its own
    seed): every continuous parameter is uniform over its Table 2 range (Kolmogorov-Smirnov
    against that uniform), so nothing lies outside it and both halves are used alike; the
    translation is a whole number of pixels within ±10 % of the side, symmetric about 0; a
    horizontal flip happens half the time; the jitter order is a uniform permutation."""
    from scipy import stats

    from kdlib.augment import FIELDS
    from kdlib.train import sample_seed

    ds = build_dataset("shapes", tiny_shapes, "train", train=True, image_size=64)
    draws = torch.stack(
        [ds[(i, sample_seed(0, epoch, i))]["params"] for epoch in range(500) for i in range(len(ds))]
    ).double()
    n = len(draws)
    col = {name: draws[:, FIELDS.index(name)].numpy() for name in FIELDS}
    for name, low, high in TABLE2_RANGES:
        values = col[name]
        assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6, name
        assert values.min() < low + 0.01 * (high - low) and values.max() > high - 0.01 * (high - low), name
        assert stats.kstest(values, stats.uniform(low, high - low).cdf).pvalue > 1e-3, name
    for axis in ("tx", "ty"):
        values = col[axis]
        assert np.array_equal(values, np.round(values)) and set(np.unique(values)) == set(range(-6, 7)), axis
        # round(x), x uniform on [-6.4, 6.4): each inner value has mass 1/12.8, the two ends 0.9/12.8
        counts = np.array([(values == k).sum() for k in range(-6, 7)])
        expected = n * np.array([0.9] + [1.0] * 11 + [0.9]) / 12.8
        assert stats.chisquare(counts, expected).pvalue > 1e-3, axis
    flips = int(col["flip"].sum())
    assert set(np.unique(col["flip"])) == {0.0, 1.0}
    assert stats.binomtest(flips, n, 0.5).pvalue > 1e-3, flips
    order = draws[:, FIELDS.index("op0") : FIELDS.index("op3") + 1].long()
    assert all(sorted(row) == [0, 1, 2, 3] for row in order.tolist())
    first = np.bincount(order[:, 0].numpy(), minlength=4)
    assert stats.chisquare(first).pvalue > 1e-3, first
