"""--teacher-cache: the teacher's logits computed once per image, stale caches rebuilt."""

import json
import os

import pytest
import torch

from kdlib.augment import prepare_sample
from kdlib.checkpoints import load_model
from kdlib.cli import main
from kdlib.config import Config
from kdlib.data import build_dataset
from kdlib.models import TeacherWrapper, build_model
from kdlib.teacher_cache import ensure_cache, feature_bytes_per_image
from kdlib.train import fit


def _teacher(path):
    return TeacherWrapper(load_model(path))


def test_cache_holds_the_teachers_native_logits_and_is_reused(tiny_shapes, tiny_teacher, tmp_path):
    teacher = _teacher(tiny_teacher)
    ds = build_dataset("shapes", tiny_shapes, "train", train=True, image_size=64)
    messages = []
    maps, card = ensure_cache(teacher, ds, tmp_path, 64, log=messages.append)
    assert (
        card["built"] and card["shape"] == [len(ds), 21, 16, 16] and card["bytes_per_image"] == 21 * 16 * 16 * 2
    )  # stride 4
    plain = build_dataset("shapes", tiny_shapes, "train", train=False, image_size=64)
    expected = teacher.native_logits(torch.stack([prepare_sample(plain[i])[0] for i in range(len(plain))]))
    got = torch.stack([maps[i] for i in range(len(maps))]).float()
    assert torch.allclose(got, expected, atol=2e-3 * expected.abs().max().item())
    _, again = ensure_cache(teacher, ds, tmp_path, 64, log=messages.append)
    assert not again["built"] and "no cache yet" in messages[0]


def test_stale_cache_is_rebuilt_with_the_reason(tiny_shapes, tiny_teacher, tmp_path):
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(tiny_shapes, root)
    ds = build_dataset("shapes", root, "train", train=True, image_size=64)
    messages = []
    ensure_cache(_teacher(tiny_teacher), ds, tmp_path / "cache", 64, log=messages.append)
    torch.manual_seed(1)
    other = TeacherWrapper(build_model("lraspp_resnet18"))
    _, card = ensure_cache(other, ds, tmp_path / "cache", 64, log=messages.append)
    assert card["built"] and "the teacher's weights changed" in messages[-2]
    mask = ds.masks[0]
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))  # a re-exported mask
    _, card = ensure_cache(other, ds, tmp_path / "cache", 64, log=messages.append)
    assert card["built"] and "data.files_sha256 changed" in messages[-2]
    data_file = next((tmp_path / "cache").glob("*.f16"))
    data_file.write_bytes(data_file.read_bytes()[:100])  # a crash while copying it, say
    _, card = ensure_cache(other, ds, tmp_path / "cache", 64, log=messages.append)
    assert card["built"] and "incomplete" in messages[-2]


def test_training_from_the_cache_never_runs_the_teacher(tiny_shapes, tiny_teacher, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = TeacherWrapper.teacher_forward

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TeacherWrapper, "teacher_forward", counting)
    cfg = Config(
        method="response",
        dataset="shapes",
        data_root=str(tiny_shapes),
        out=str(tmp_path / "run"),
        epochs=2,
        batch_size=4,
        workers=2,
        teacher_weights=str(tiny_teacher),
        progress="none",
        teacher_cache=str(tmp_path / "cache"),
    )
    metrics = fit(cfg)
    assert calls["n"] == 0 and metrics["epochs_run"] == 2
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["teacher_cache_cards"]["train"]["built"] and config["teacher_cache_cards"]["val"]["shape"][0] == 6
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert all(float(r.split(",")[header.index("train_response")]) > 0 for r in rows[1:])


def test_cache_serves_the_methods_that_read_logits_only(tmp_path, capsys):
    for method in ("feature", "both", "pairwise", "none"):
        with pytest.raises(SystemExit) as err:
            main(["train", "--method", method, "--teacher-cache", str(tmp_path / "c"), "--out", str(tmp_path / "x")])
        assert err.value.code == 2
        assert "serves the methods that read the teacher's logits only" in capsys.readouterr().err


def test_feature_storage_is_measured(tiny_teacher):
    # LR-ASPP/ResNet-18 at 64 px: 64·16² + 128·8² + 256·4² + 512·2² values, 2 bytes each
    assert feature_bytes_per_image(_teacher(tiny_teacher), 64) == 2 * (64 * 256 + 128 * 64 + 256 * 16 + 512 * 4)
