"""Broken data ends in a clear error that names the file, or, with skip_bad, is left out."""

import numpy as np
import pytest
from PIL import Image
from test_data import write_voc

from kdlib.cli import main
from kdlib.data import DataError, build_dataset


def _voc(tmp_path):
    voc = write_voc(tmp_path)
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    return voc, ids


def _break(voc, sample_id, how):
    image = voc / "JPEGImages" / f"{sample_id}.jpg"
    mask = voc / "SegmentationClass" / f"{sample_id}.png"
    if how == "truncated image":
        image.write_bytes(image.read_bytes()[:200])
    elif how == "truncated mask":
        mask.write_bytes(mask.read_bytes()[:60])
    elif how == "missing mask":
        mask.unlink()
    elif how == "missing image":
        image.unlink()
    elif how == "size mismatch":
        Image.fromarray(np.zeros((10, 12), np.uint8), mode="L").save(mask)
    elif how == "bad labels":
        w, h = Image.open(image).size
        values = np.zeros((h, w), np.uint8)
        values[0, 0] = 42
        Image.fromarray(values, mode="L").save(mask)
    elif how == "colour mask":
        w, h = Image.open(image).size
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(mask)
    return image, mask


CASES = {
    "truncated image": ("image", "cannot read the image"),
    "truncated mask": ("mask", "cannot read the mask"),
    "missing mask": ("mask", "missing"),
    "missing image": ("image", "missing"),
    "size mismatch": ("image", "but its mask"),
    "bad labels": ("mask", "[42] outside 0..20"),
    "colour mask": ("mask", "RGB image"),
}


@pytest.mark.parametrize("how", sorted(CASES))
def test_each_broken_sample_names_its_file(tmp_path, how):
    voc, ids = _voc(tmp_path)
    image, mask = _break(voc, ids[1], how)
    which, message = CASES[how]
    with pytest.raises(DataError) as err:
        ds = build_dataset("voc", tmp_path, "train", train=False, image_size=32)
        for i in range(len(ds)):
            ds[i]
    assert str(image if which == "image" else mask) in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize("how", sorted(CASES))
def test_skip_bad_leaves_broken_samples_out_and_counts_them(tmp_path, how):
    voc, ids = _voc(tmp_path)
    _break(voc, ids[1], how)
    with pytest.warns(UserWarning, match="skipped 1 broken sample"):
        ds = build_dataset("voc", tmp_path, "train", train=False, image_size=32, skip_bad=True)
    assert len(ds) == len(ids) - 1 and ids[1] not in ds.ids
    assert [sample_id for sample_id, _ in ds.skipped] == [ids[1]]
    for i in range(len(ds)):
        ds[i]


def test_empty_split_list(tmp_path):
    voc, _ = _voc(tmp_path)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n")
    with pytest.raises(FileNotFoundError, match="lists no image ids"):
        build_dataset("voc", tmp_path, "train", train=False)


def test_cli_train_reports_a_broken_file_and_exits_non_zero(tiny_shapes, tmp_path, capsys):
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(tiny_shapes, root)
    first = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    bad = root / "SegmentationClass" / f"{first}.png"
    Image.fromarray(np.full((64, 64), 99, np.uint8), mode="L").save(bad)
    args = [
        "train",
        "--data-root",
        str(root),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--workers",
        "0",
        "--batch-size",
        "4",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "[99] outside 0..20" in err
    # with --skip-bad the run goes through and records what it left out
    with pytest.warns(UserWarning, match=r"skipped 1 broken sample"):  # said where the run is watched, too
        assert main(args + ["--skip-bad", "--overwrite"]) == 0
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_samples"] == {"train": 1, "val": 0}
