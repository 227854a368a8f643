import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from kdlib import shapes
from kdlib.augment import TABLE2, prepare_sample
from kdlib.cli import main
from kdlib.conventions import VOID
from kdlib.data import build_dataset, class_names


def test_classes_cover_shape_texture_colour_with_confusable_pairs():
    assert len(shapes.CLASSES) == 21 and shapes.CLASS_NAMES[0] == "background"
    assert len(set(shapes.CLASS_NAMES)) == 21
    triples = {(c.shape, c.texture, c.colour) for c in shapes.CLASSES[1:]}
    assert len(triples) == 20
    assert len({(c.colour, c.texture) for c in shapes.CLASSES[1:]}) == 20  # colour and texture name the class
    pairs = shapes.confusable_pairs()
    kinds = [k for _, _, k in pairs]
    assert kinds.count("colour") >= 5 and kinds.count("texture") >= 5
    for a, b, kind in pairs:
        ca, cb = shapes.CLASSES[a], shapes.CLASSES[b]
        assert ca.shape == cb.shape
        if kind == "colour":
            assert ca.texture == cb.texture and ca.colour != cb.colour
        else:
            assert ca.colour == cb.colour and ca.texture != cb.texture
    assert class_names("shapes") == shapes.CLASS_NAMES


def test_colour_families_are_further_apart_than_the_students_hue_jitter_can_move_an_object():
    # an object's hue lies within HUE_SPREAD of its family's; Table 2 shifts every hue by up to
    # ±hue turns; two families must stay apart even when both objects stray towards each other
    # and the jitter moves one of them all the way
    jitter = TABLE2["hue"] * 360
    hues = sorted(shapes.HUES.values())
    gaps = [(b - a) % 360 for a, b in zip(hues, hues[1:] + hues[:1])]
    assert min(gaps) > 2 * (jitter + shapes.HUE_SPREAD)


def test_sample_is_a_pure_function_of_seed_split_index():
    a = shapes.render_sample(0, "train", 5, 64)
    b = shapes.render_sample(0, "train", 5, 64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    for other in (
        shapes.render_sample(1, "train", 5, 64),
        shapes.render_sample(0, "val", 5, 64),
        shapes.render_sample(0, "train", 6, 64),
    ):
        assert not np.array_equal(a[0], other[0])


def test_sample_content_and_metadata():
    image, mask, meta = shapes.render_sample(0, "train", 3, 96)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= set(range(21)) | {VOID}
    for obj in meta["objects"]:
        assert set(obj) >= {"class", "area", "bbox", "occluded_fraction", "illumination"}
        assert 0 <= obj["occluded_fraction"] <= 1 and obj["illumination"] > 0
        x0, y0, x1, y1 = obj["bbox"]
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
        assert obj["area"] <= (mask == obj["class"]).sum()


def test_nuisances_occur_across_samples():
    metas = [shapes.render_sample(0, "val", i, 64)[2] for i in range(120)]
    objects = [o for m in metas for o in m["objects"]]
    assert any(o["area_fraction"] < 0.01 for o in objects)  # small objects
    assert any(o["area_fraction"] > 0.05 for o in objects)  # large ones too
    assert any(o["occluded_fraction"] > 0.2 for o in objects)  # occlusion
    assert any(o["illumination"] < 0.45 for o in objects)  # dim light
    assert any(m["blur"] > 0 for m in metas) and any(m["noise"] > 0.03 for m in metas)
    assert len({o["class"] for o in objects}) == 20


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_cli_writes_voc_layout_deterministically(tmp_path, capsys):
    args = ["shapes", "--train", "6", "--val", "4", "--teacher-train", "5", "--size", "64", "--seed", "3"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a = tmp_path / "a"
    assert _digest(a) == _digest(tmp_path / "b")
    for split, n in (("train", 6), ("val", 4), ("teacher_train", 5)):
        ids = (a / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert len(ids) == n
        assert len(shapes.load_metadata(a, split)) == n
        png = Image.open(a / "SegmentationClass" / f"{ids[0]}.png")
        assert png.mode == "P" and png.size == (64, 64)
    card = json.loads((a / "benchmark.json").read_text())
    assert card["version"] == shapes.BENCHMARK_VERSION and card["seed"] == 3 and card["size"] == 64
    assert card["classes"] == list(shapes.CLASS_NAMES)
    # the very reading code of VOC
    ds = build_dataset("shapes", a, "train", train=True, image_size=64)
    image, mask = prepare_sample(ds[0])
    assert image.shape == (3, 64, 64) and mask.dtype == torch.int64
    raw_mask = ds.read(0)[1]
    expected = shapes.render_sample(3, "train", 0, 64)[1]
    assert np.array_equal(raw_mask.numpy(), expected)


def test_generate_skips_an_identical_benchmark(tmp_path):
    shapes.generate(tmp_path, teacher_train=2, train=2, val=2, progress=False)
    stamp = (tmp_path / "JPEGImages" / "train_00000.jpg").stat().st_mtime_ns
    shapes.generate(tmp_path, teacher_train=2, train=2, val=2, progress=False)
    assert (tmp_path / "JPEGImages" / "train_00000.jpg").stat().st_mtime_ns == stamp


def test_missing_shapes_folder_says_how_to_generate(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m kdlib shapes --out"):
        build_dataset("shapes", tmp_path / "none", "train", train=False, image_size=64)


def test_the_class_table_names_the_background_as_such():
    from kdlib.data import class_table

    table = class_table("shapes")
    assert table["class"].tolist() == list(shapes.CLASS_NAMES)
    assert table.iloc[0]["class"] == "background" and table.iloc[0]["look-alikes"] == ""


def test_the_nuisance_summary_counts_the_hidden_objects_chapter_6_leaves_out(monkeypatch):
    from kdlib import failures

    def obj(area, cls):
        return {"area": area, "area_fraction": area / 4096, "illumination": 1.0, "occluded_fraction": 0.0} | {
            "class": cls,
            "bbox": [0, 0, 8, 8],
        }

    metas = [
        {"objects": [obj(0, 1), obj(40, 2)], "blur": 0, "noise": 0.0},
        {"objects": [obj(9, 3)], "blur": 1, "noise": 0.01},
    ]
    monkeypatch.setattr(shapes, "load_metadata", lambda root, split: metas)
    summary = shapes.nuisance_summary("unused", "val")
    hidden = next(v for k, v in summary.items() if k.startswith("of which wholly hidden"))
    assert (summary["objects"], hidden) == (3, 1)  # the one with no visible pixel
    assert summary["objects"] - hidden == len(failures.objects_from_metadata(metas)) == 2
