"""Nothing finished is lost: one writer per run folder, and a failed write (full disk,
read-only file system, file-size limit) names the file and leaves the previous one intact."""

import errno
import json
import os
import resource
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import pytest
import torch

from kdlib import files, plots
from kdlib.cli import main
from kdlib.config import Config
from kdlib.files import DiskWriteError, RunFolderError, RunLock
from kdlib.train import fit


def _cfg(root, out, **kw):
    base = dict(
        method="none",
        dataset="shapes",
        data_root=str(root),
        out=str(out),
        epochs=1,
        batch_size=4,
        workers=0,
        progress="none",
        seed=0,
    )
    return Config(**(base | kw))


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def _train_cmd(root, out, epochs):
    return [
        sys.executable,
        "-m",
        "kdlib",
        "train",
        "--method",
        "none",
        "--data-root",
        str(root),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--progress",
        "none",
    ]


def test_second_run_on_a_busy_folder_is_refused(tiny_shapes, tmp_path, capsys):
    """A real first run holds the folder; a second one (even with --overwrite or --resume) is
    refused with the holder's pid, and touches nothing. Killing the holder frees the lock."""
    out = tmp_path / "run"
    first = subprocess.Popen(_train_cmd(tiny_shapes, out, 200), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read()
        for extra in (["--overwrite"], ["--resume"], []):
            before = _snapshot(out)
            with pytest.raises(SystemExit) as exc:
                main(_train_cmd(tiny_shapes, out, 200)[3:] + extra)
            assert exc.value.code == 2
            err = capsys.readouterr().err
            assert "in use by another run" in err and f"pid {first.pid}" in err and str(out) in err
            after = _snapshot(out)
            assert set(before) <= set(after) and before["config.json"] == after["config.json"]
    finally:
        first.kill()
        first.wait()
    with RunLock(out):  # the kernel released the killed run's lock: nothing stale to clean up
        pass


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunFolderError, match="in use by another run"):
            fit(_cfg(tmp_path, tmp_path / "run", overwrite=True))


def _failing_open(error):
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(f".pt.{os.getpid()}.tmp") and "w" in mode:
            f = real_open(path, mode, *args, **kwargs)
            f.write(b"half a checkpoint")
            f.close()
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, mode, *args, **kwargs)

    return fake_open


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS])
def test_failed_checkpoint_write_keeps_the_previous_files(tiny_shapes, tmp_path, monkeypatch, error):
    out = tmp_path / "run"
    fit(_cfg(tiny_shapes, out))
    before = _snapshot(out)
    monkeypatch.setattr(files, "open", _failing_open(error), raising=False)
    with pytest.raises(DiskWriteError) as exc:
        fit(_cfg(tiny_shapes, out, epochs=2, resume=True))
    message = str(exc.value)
    assert str(out) in message and ".pt" in message and "previous version is unchanged" in message
    assert ("disk space" if error == errno.ENOSPC else "read-only") in message
    after = _snapshot(out)  # config.json is rewritten at the start with the resumed settings
    assert json.loads(after.pop("config.json"))["resume"] is True
    before.pop("config.json")
    assert after == before  # every earlier artifact byte for byte, no temporary file left
    monkeypatch.undo()
    fit(_cfg(tiny_shapes, out, epochs=2, resume=True))  # and the run still resumes
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2


def test_file_size_limit_from_the_kernel_ends_the_cli_cleanly(tiny_shapes, tmp_path):
    """A real write failure: the kernel refuses to grow a file past RLIMIT_FSIZE (EFBIG), as a
    full disk would refuse with ENOSPC. The CLI exits 1 naming the file; nothing is lost."""
    out = tmp_path / "run"
    subprocess.run(_train_cmd(tiny_shapes, out, 1), check=True, capture_output=True, timeout=300)
    before = _snapshot(out)

    def limit():  # checkpoints are ~44 MB, the JSON/CSV files a few kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))

    proc = subprocess.run(
        _train_cmd(tiny_shapes, out, 2) + ["--resume"], capture_output=True, text=True, timeout=300, preexec_fn=limit
    )
    assert proc.returncode == 1, proc.stderr
    assert "could not write" in proc.stderr and ".pt" in proc.stderr and "previous version is unchanged" in proc.stderr
    assert "Traceback" not in proc.stderr
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k != "config.json"} == {
        k: v for k, v in before.items() if k != "config.json"
    }


def test_failed_figure_write_keeps_the_previous_png(tmp_path, monkeypatch):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    path = plots.save_figure(fig, tmp_path / "curve.png")
    before = path.read_bytes()
    ax.plot([0, 1], [1, 0])

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(files, "open", read_only, raising=False)
    with pytest.raises(DiskWriteError, match=r"curve\.png: Read-only file system \(the file system is read-only"):
        plots.save_figure(fig, path)
    plt.close(fig)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_with_the_component_and_keeps_checkpoints(
    tiny_shapes, tmp_path, monkeypatch, capsys, bad
):
    from kdlib import methods

    out = tmp_path / "run"
    fit(_cfg(tiny_shapes, out))
    before = _snapshot(out)
    real = methods.objective
    calls = {"n": 0}

    def poisoned_objective(cfg):  # the run's objective, whose 2nd training step of epoch 2 blows up
        bound = real(cfg)

        def step(student_out, teacher_out, target, kd_mask=None):
            loss, parts = bound(student_out, teacher_out, target, kd_mask)
            if torch.is_grad_enabled():  # a training step, not validation
                calls["n"] += 1
                if calls["n"] == 2:
                    parts = parts | {"ce": parts["ce"] * bad}
            return loss, parts

        step.method = bound.method
        return step

    monkeypatch.setattr(methods, "objective", poisoned_objective)
    args = [
        "train",
        "--method",
        "none",
        "--data-root",
        str(tiny_shapes),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--progress",
        "none",
        "--resume",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (
        "train loss component(s) ['ce']" in err
        and "non-finite at epoch 2, step 1" in err
        and "last.pt and best.pt" in err
    )
    after = _snapshot(out)
    for name in ("last.pt", "best.pt", "history.csv", "metrics.json"):
        assert after[name] == before[name], name


def _student_ckpt(tmp_path, tiny_shapes):
    out = tmp_path / "student"
    fit(_cfg(tiny_shapes, out))
    return out / "best.pt"


def test_broken_checkpoints_get_a_clear_error(tiny_shapes, tmp_path, capsys):
    from kdlib.models import build_model

    good = _student_ckpt(tmp_path, tiny_shapes)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    no_keys = tmp_path / "no_keys.pt"
    torch.save({"weights": {}}, no_keys)
    ten_classes = tmp_path / "ten.pt"
    torch.save(
        {"model": build_model("student", 10).state_dict(), "config": {"model": "student", "num_classes": 10}},
        ten_classes,
    )
    mislabelled = tmp_path / "mislabelled.pt"  # says 21 classes, holds a 10-class head
    torch.save({"model": build_model("student", 10).state_dict(), "config": {"model": "student"}}, mislabelled)
    cases = {
        truncated: "cannot be read (truncated",
        no_keys: "lacks the key(s) ['model', 'config']",
        ten_classes: "predicts 10 classes; this project uses 21",
        mislabelled: "does not fit the 'student' with 21 classes",
    }
    for path, message in cases.items():
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "--checkpoint", str(path), "--data-root", str(tiny_shapes)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and str(path) in err and message in err, err
        assert "size mismatch for" not in err or err.count("size mismatch") == 1
    # a student checkpoint given as the teacher: another architecture
    args = [
        "train",
        "--method",
        "response",
        "--data-root",
        str(tiny_shapes),
        "--out",
        str(tmp_path / "kd"),
        "--epochs",
        "1",
        "--workers",
        "0",
        "--teacher-weights",
        str(good),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert str(good) in err and "holds a 'student', not the expected 'lraspp_resnet18'" in err


def test_resume_from_another_architecture_is_refused(tiny_shapes, tmp_path, capsys):
    from kdlib.models import build_model

    out = tmp_path / "run"
    fit(_cfg(tiny_shapes, out))
    foreign = build_model("lraspp_resnet18").state_dict()
    ckpt = torch.load(out / "last.pt", weights_only=True)
    torch.save(ckpt | {"model": foreign}, out / "last.pt")
    args = [
        "train",
        "--method",
        "none",
        "--data-root",
        str(tiny_shapes),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--workers",
        "0",
        "--batch-size",
        "4",
        "--resume",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {out / 'last.pt'} does not fit the 'student' of this run" in err and "Traceback" not in err
