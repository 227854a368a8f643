import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kdlib.augment import prepare_sample
from kdlib.conventions import MEAN, STD, VOID, voc_palette
from kdlib.data import DatasetNotFoundError, build_dataset, denormalize

SIZES = [(100, 75), (90, 120), (64, 64), (130, 97)]  # (width, height), several aspect ratios
LABELS = {0, 3, 15, VOID}


def write_voc(root, all_foreground=False):
    """A tiny VOC-layout folder: JPEGs of several sizes, palette PNG masks with void borders."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for i, (w, h) in enumerate(SIZES):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        if all_foreground:
            mask[:] = 7
        else:
            mask[h // 4 : h // 2, w // 4 : w // 2] = 3
            mask[h // 2 :, w // 2 :] = 15
            mask[h // 4 - 1, w // 4 - 1 : w // 2 + 1] = VOID  # void border above object 3
            mask[h // 2 - 1, w // 2 :] = VOID
        ids.append(f"2012_{i:06d}")
        Image.fromarray(image).save(voc / "JPEGImages" / f"{ids[-1]}.jpg")
        png = Image.fromarray(mask, mode="P")
        png.putpalette(voc_palette())
        png.save(voc / "SegmentationClass" / f"{ids[-1]}.png")
    for split in ("train", "val"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return voc


@pytest.fixture
def voc_root(tmp_path):
    write_voc(tmp_path)
    return tmp_path


def test_voc_palette_is_the_devkits():
    p = voc_palette()
    assert p[0:3] == [0, 0, 0] and p[3:6] == [128, 0, 0] and p[15 * 3 : 16 * 3] == [192, 128, 128]
    assert p[255 * 3 : 256 * 3] == [224, 224, 192]


@pytest.mark.parametrize("train", [False, True])
def test_voc_shapes_dtypes_labels(voc_root, train):
    ds = build_dataset("voc", voc_root, "train", train=train, image_size=64)
    assert len(ds) == len(SIZES)
    for i in range(len(ds)):
        image, mask = prepare_sample(ds[i])
        assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
        assert mask.dtype == torch.int64 and mask.shape == (64, 64)
        assert set(mask.unique().tolist()) <= LABELS
        assert denormalize(image).min() >= 0 and denormalize(image).max() <= 1


def test_voc_root_may_be_any_level(voc_root):
    for root in (voc_root, voc_root / "VOCdevkit", voc_root / "VOCdevkit" / "VOC2012"):
        assert len(build_dataset("voc", root, "val", train=False, image_size=32)) == len(SIZES)


def test_eval_image_and_mask_equal_the_resized_originals(voc_root):
    ds = build_dataset("voc", voc_root, "val", train=False, image_size=96)
    raw_image, raw_mask = ds.read(1)
    image, mask = prepare_sample(ds[1])
    expected = F.interpolate(raw_mask[None, None].float(), size=(96, 96), mode="nearest")[0, 0].long()
    assert torch.equal(mask, expected)
    # the image is the antialiased resize, normalised with the teacher's statistics
    resized = F.interpolate(
        raw_image[None].float() / 255, size=(96, 96), mode="bilinear", antialias=True, align_corners=False
    )[0]
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(image, (resized - mean) / std, atol=0.03)


def test_augmentation_keeps_label_set_and_fills_void(voc_root):
    """Catches a mask interpolated bilinearly (new values), jitter applied to the mask, and a
    warp that fills exposed pixels with 0 (background) instead of 255."""
    ds = build_dataset("voc", voc_root, "train", train=True, image_size=64)
    torch.manual_seed(0)
    saw_void = 0
    for _ in range(12):
        for i in range(len(ds)):
            _, mask = prepare_sample(ds[i])
            values = set(mask.unique().tolist())
            assert values <= LABELS, f"augmented mask has labels {values - LABELS}"
            saw_void += (mask[0] == VOID).any().item() or (mask[:, 0] == VOID).any().item()
    assert saw_void > 0  # rotation/affine exposes borders, and they are void


def test_all_foreground_mask_never_gains_background(tmp_path):
    write_voc(tmp_path, all_foreground=True)
    ds = build_dataset("voc", tmp_path, "train", train=True, image_size=64)
    torch.manual_seed(1)
    exposed = 0
    for _ in range(25):
        for i in range(len(ds)):
            _, mask = prepare_sample(ds[i])
            values = set(mask.unique().tolist())
            assert values <= {7, VOID}, f"background appeared: {values}"
            exposed += int((mask == VOID).sum())
    assert exposed > 0


def test_augmentation_is_random_but_reproducible(voc_root):
    ds = build_dataset("voc", voc_root, "train", train=True, image_size=64)
    torch.manual_seed(3)
    a = prepare_sample(ds[0])
    torch.manual_seed(3)
    b = prepare_sample(ds[0])
    c = prepare_sample(ds[0])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(b[0], c[0])


def test_colour_jitter_leaves_mask_alone(voc_root):
    """Same geometry, with and without the photometric draw: the masks are identical, the
    images are not. And Table 2's ranges are the report's."""
    from kdlib.augment import TABLE2, augment_batch, sample_params

    ds = build_dataset("voc", voc_root, "train", train=True, image_size=64)
    sample = ds[(0, 7)]
    jittered = sample["params"]
    plain = jittered.clone()
    plain[7:11] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    a = augment_batch(sample["image"][None], sample["mask"][None], jittered[None])
    b = augment_batch(sample["image"][None], sample["mask"][None], plain[None])
    assert torch.equal(a[1], b[1]) and not torch.equal(a[0], b[0])
    assert TABLE2 == {
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
    draws = torch.stack([sample_params("table2", 64, 64, torch.Generator().manual_seed(i)) for i in range(400)])
    assert (
        draws[:, 1].abs().max() <= 10 and draws[:, 2:4].abs().max() <= 6.4 and draws[:, 2].eq(draws[:, 2].round()).all()
    )
    assert 0.9 <= draws[:, 4].min() and draws[:, 4].max() <= 1.1 and draws[:, 5:7].abs().max() <= 5
    assert 0.3 < draws[:, 0].mean() < 0.7 and draws[:, 10].abs().max() <= 0.1
    geometric = sample_params("geometric", 64, 64, torch.Generator().manual_seed(0))
    assert geometric[7:].tolist() == [1, 1, 1, 0, 0, 1, 2, 3]


def test_missing_or_incomplete_folder_explains_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("voc", tmp_path / "nowhere", "train", train=False)
    message = str(err.value)
    assert "JPEGImages" in message and "SegmentationClass" in message and "train.txt" in message
    assert "VOCtrainval_11-May-2012.tar" in message
    voc = write_voc(tmp_path)
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="val.txt"):
        build_dataset("voc", tmp_path, "val", train=False)
    with pytest.raises(DatasetNotFoundError, match="SegmentationClassAug"):
        build_dataset("voc", tmp_path, "train_aug", train=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("coco", "x", "train", train=False)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_dataset("shapes", "x", "train", train=False, image_size=100)


def test_sbd_train_aug_reads_its_own_masks(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    (voc / "SegmentationClassAug").mkdir()
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    for i in ids:
        w, h = Image.open(voc / "JPEGImages" / f"{i}.jpg").size
        Image.fromarray(np.full((h, w), 5, np.uint8)).save(voc / "SegmentationClassAug" / f"{i}.png")
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(ids[:2]))
    ds = build_dataset("voc", voc_root, "train_aug", train=False, image_size=32)
    assert len(ds) == 2 and set(ds[0]["mask"].unique().tolist()) == {5}


def test_an_unlabeled_voc_split_reads_images_whose_masks_do_not_exist(voc_root):
    """--unlabeled-split on VOC: a list of extra image ids (e.g. SBD's) with JPEGs only."""
    from kdlib.data import DataError

    voc = voc_root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(1)
    extra = [f"2008_{i:06d}" for i in range(3)]
    for i in extra:
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{i}.jpg")
    (voc / "ImageSets" / "Segmentation" / "sbd_extra.txt").write_text("\n".join(extra) + "\n")
    ds = build_dataset("voc", voc_root, "sbd_extra", train=True, image_size=32, labelled=False)
    item = ds[(0, 7)]
    assert len(ds) == 3 and item["image"].shape == (3, 32, 32) and (item["mask"] == VOID).all()
    with pytest.raises(DataError, match="SegmentationClass/2008_000000.png is missing"):
        build_dataset("voc", voc_root, "sbd_extra", train=True, image_size=32)  # labelled: masks required


@pytest.mark.parametrize("train", [False, True])
def test_every_split_serves_one_kind_of_item(voc_root, train):
    """A dict of the uint8 image and mask at the model's size and the sample's augmentation
    parameters (the identity on an evaluation split); nothing is augmented or normalised yet."""
    from kdlib.augment import IDENTITY

    ds = build_dataset("voc", voc_root, "train", train=train, image_size=64)
    for key in (0, (1, 5)):
        item = ds[key]
        assert set(item) == {"image", "mask", "params"}
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 64, 64)
        assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (64, 64)
        assert torch.equal(item["params"], IDENTITY) != train
    assert torch.equal(ds.evaluation_view()[(0, 5)]["params"], IDENTITY)
    assert len(ds.subset(2)) == 2 and ds.subset(2).ids == ds.ids[:2]


def test_cached_teacher_maps_travel_with_their_sample(voc_root):
    from kdlib.teacher_cache import WithTeacherMaps

    ds = build_dataset("voc", voc_root, "train", train=True, image_size=64)
    maps = [torch.full((21, 8, 8), float(i)) for i in range(len(ds))]
    served = WithTeacherMaps(ds, maps)
    item = served[(2, 9)]
    assert torch.equal(item["params"], ds[(2, 9)]["params"]) and torch.equal(item["teacher"], maps[2])
    with pytest.raises(ValueError, match="teacher maps hold 1 samples"):
        WithTeacherMaps(ds, maps[:1])


def test_a_small_evaluation_split_is_read_from_disk_once(tiny_shapes, monkeypatch):
    """Validation runs every epoch: a split that fits its budget (the embedded benchmark's) is
    decoded once and served from memory, the same tensors; one that does not (VOC's) is read
    again each pass rather than held in every loader worker."""
    from kdlib.data import SegmentationFolder

    reads = []
    original = SegmentationFolder.read
    monkeypatch.setattr(SegmentationFolder, "read", lambda self, i: reads.append(i) or original(self, i))
    val = build_dataset("shapes", tiny_shapes, "val", train=False, image_size=32)
    first = [val[i] for i in range(len(val))]
    again = [val[i] for i in range(len(val))]
    assert sorted(reads) == list(range(len(val)))  # once each
    assert all(torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]) for a, b in zip(first, again))
    assert val.preload()

    monkeypatch.setattr(SegmentationFolder, "EVAL_CACHE_BYTES", 0)
    reads.clear()
    big = build_dataset("shapes", tiny_shapes, "val", train=False, image_size=32)
    for _ in range(2):
        assert all(torch.equal(big[i]["image"], a["image"]) for i, a in enumerate(first))
    assert len(reads) == 2 * len(big) and not big.preload()
    assert len(reads) == 2 * len(big)  # a split over its budget is not even started on
