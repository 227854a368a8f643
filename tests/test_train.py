import csv
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from kdlib.checkpoints import load_checkpoint
from kdlib.cli import main
from kdlib.config import Config
from kdlib.methods import METHODS
from kdlib.train import RunFolderError, fit


def _cfg(root, teacher, out, **kw):
    base = dict(
        dataset="shapes",
        data_root=str(root),
        out=str(out),
        epochs=2,
        batch_size=4,
        workers=0,
        teacher_weights=str(teacher),
        progress="none",
        seed=0,
    )
    return Config(**(base | kw))


def _history(out):
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_end_to_end(tiny_shapes, tiny_teacher, tmp_path, method):
    out = tmp_path / method
    metrics = fit(_cfg(tiny_shapes, tiny_teacher, out, method=method))
    for name in ("config.json", "history.csv", "metrics.json", "best.pt", "last.pt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["lr"] == 1e-3
    assert {k: config[k] for k in ("alpha", "beta", "temperature")} == METHODS[method].defaults  # recorded, resolved
    assert config["image_size"] == 64 and config["environment"]["torch"] == torch.__version__
    assert config["teacher_source"] == ("none" if method == "none" else "online")
    # a paper's settings that are constants of its terms are recorded too: CIRKD's, from its train_cirkd.py
    constants = {"similarity_temperature": 0.1, "region_weight": 0.1} if method == "cirkd" else {}
    assert config["method_constants"] == constants
    rows = _history(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    terms = {"response": ("response", "both", "cirkd"), "feature": ("feature", "both")}
    terms |= {m: (m,) for m in ("pairwise", "cwd", "dist", "response_ls", "at", "feature_student")}
    terms |= {"cirkd_pixel": ("cirkd",), "cirkd_region": ("cirkd",)}
    for split in ("train", "val"):
        assert rows[0][f"{split}_ce"] != ""
        for term, methods in terms.items():
            assert (rows[0][f"{split}_{term}"] != "") == (method in methods), (split, term)
    assert all(float(r["epoch_seconds"]) > 0 and float(r["train_images_per_s"]) > 0 for r in rows)
    assert all(0 <= float(r["train_miou"]) <= 1 for r in rows)  # the whole train split, every epoch
    best_row = rows[metrics["best_epoch"] - 1]
    assert metrics["train_miou"] == pytest.approx(float(best_row["train_miou"]), rel=1e-4)
    assert metrics["epochs_run"] == 2 and 1 <= metrics["best_epoch"] <= 2
    assert len(metrics["per_class_iou"]) == 21 and 0 <= metrics["best_miou"] <= 1
    assert metrics["parameters"] == 3_689_061 and metrics["total_seconds"] > 0
    best = load_checkpoint(out / "best.pt")
    assert set(best) >= {"model", "optimizer", "scheduler", "state", "rng", "config", "epoch"}
    assert (best["projections"] is not None) == (method != "none")
    assert (best["adapters"] is not None) == (method in ("feature_student", "cirkd"))


def test_method_none_never_builds_a_teacher(tiny_shapes, tmp_path):
    fit(_cfg(tiny_shapes, tmp_path / "does-not-exist.pt", tmp_path / "run", method="none", epochs=1))


def test_feature_kd_trains_the_projections(tiny_shapes, tiny_teacher, tmp_path):
    from kdlib.checkpoints import load_model
    from kdlib.models import TeacherWrapper, build_model

    # the run's own starting projections: the trainer seeds, builds the student, then the wrapper
    torch.manual_seed(0)
    build_model("student")
    initial = TeacherWrapper(load_model(tiny_teacher)).projections.state_dict()
    # a run whose steps cannot move the weights ends where it started: the reconstruction is right
    fit(_cfg(tiny_shapes, tiny_teacher, tmp_path / "still", method="feature", epochs=1, lr=1e-12))
    still = load_checkpoint(tmp_path / "still" / "last.pt")["projections"]
    assert all(torch.allclose(initial[k].float(), still[k].float(), atol=1e-8) for k in initial)
    fit(_cfg(tiny_shapes, tiny_teacher, tmp_path / "f", method="feature", epochs=1))
    trained = load_checkpoint(tmp_path / "f" / "last.pt")["projections"]
    moved = [k for k in initial if k.endswith("weight") and (initial[k] - trained[k]).abs().max() > 1e-4]
    assert len(moved) == 4  # every level's projection learned


def test_adapters_train_with_the_student_and_stay_out_of_it(tiny_shapes, tiny_teacher, tmp_path):
    """feature_student's 1×1 adapters (student width -> teacher width) are in the optimizer and
    in the checkpoints, and no part of the student: its weights and parameter count are the
    same as without them, and a run's best.pt evaluates as a plain student."""
    from kdlib.adapters import level_adapters
    from kdlib.checkpoints import load_model
    from kdlib.models import TeacherWrapper, build_model, count_parameters

    # the run's own starting adapters: the trainer seeds, builds the student, the wrapper, the adapters
    torch.manual_seed(0)
    student = build_model("student")
    teacher = TeacherWrapper(load_model(tiny_teacher))
    initial = level_adapters(student.feature_channels, teacher.teacher_channels).state_dict()
    assert [tuple(initial[f"heads.{i}.weight"].shape) for i in range(4)] == [
        (64, 32, 1, 1),
        (128, 64, 1, 1),
        (256, 128, 1, 1),
        (512, 256, 1, 1),
    ]  # the tiny teacher's ResNet-18 widths
    fit(_cfg(tiny_shapes, tiny_teacher, tmp_path / "still", method="feature_student", epochs=1, lr=1e-12))
    still = load_checkpoint(tmp_path / "still" / "last.pt")["adapters"]
    assert set(still) == set(initial) and all(torch.allclose(initial[k], still[k], atol=1e-8) for k in initial)
    metrics = fit(_cfg(tiny_shapes, tiny_teacher, tmp_path / "f", method="feature_student", epochs=1))
    last, best = (load_checkpoint(tmp_path / "f" / name) for name in ("last.pt", "best.pt"))
    moved = [k for k in initial if k.endswith("weight") and (initial[k] - last["adapters"][k]).abs().max() > 1e-4]
    assert len(moved) == 4  # every level's adapter learned
    assert best["adapters"] is not None and set(best["model"]) == set(student.state_dict())
    assert metrics["parameters"] == count_parameters(student) == 3_689_061
    assert count_parameters(load_model(tmp_path / "f" / "best.pt")) == 3_689_061


TIMING = {"train_seconds", "train_cpu_seconds", "epoch_seconds", "train_images_per_s"}  # what a resume may change


def _same_run(a, b):
    """Two run folders hold the same run: every history column but the timings, as written, and
    the last checkpoint's weights (student, projections and adapters) bit for bit."""
    ha, hb = _history(a), _history(b)
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb):
        assert {k: v for k, v in ra.items() if k not in TIMING} == {k: v for k, v in rb.items() if k not in TIMING}
    for part in ("model", "projections", "adapters"):
        wa, wb = load_checkpoint(a / "last.pt").get(part), load_checkpoint(b / "last.pt").get(part)
        assert (wa is None) == (wb is None), part
        assert set(wa or {}) == set(wb or {}) and all(torch.equal(wa[k], wb[k]) for k in wa or {}), part


# The demo's schedule, shortened: cosine annealing (whose state a resume must restore) over
# several passes per epoch.
DEMO_LIKE = dict(epochs=4, lr=1e-2, lr_schedule="cosine", train_repeats=2)


@pytest.mark.parametrize("method", ["both", "cirkd"])  # the teacher's projections; adapters with a BN
def test_resumed_run_matches_an_uninterrupted_one(tiny_shapes, tiny_teacher, tmp_path, monkeypatch, method):
    """A run of the demo's schedule that dies in the middle of its third epoch (after one of its
    steps has moved the weights) and is resumed ends where the uninterrupted run ends: same
    history (learning rates included), same weights (the student's, the projections', the
    adapters' with their batch-norm statistics)."""
    import kdlib.train as train
    from kdlib.results import collect_runs, unfinished_runs

    full = tmp_path / "full"
    fit(_cfg(tiny_shapes, tiny_teacher, full, method=method, **DEMO_LIKE))
    lrs = [float(r["lr"]) for r in _history(full)]
    # cosine from 1e-2 to 0 over 4 epochs, by hand: 1e-2 · (1 + cos(π·e/4)) / 2 at the start of epoch e+1
    assert lrs == pytest.approx(
        [1e-2 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)], rel=1e-5
    )  # 6 digits written

    part = tmp_path / "runs" / method / "seed0"
    step, calls = train.train_step, []
    per_epoch = 2 * 8 // 4  # two passes over 8 images, batches of 4

    def dies_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * per_epoch + 2:
            raise KeyboardInterrupt  # as Ctrl-C would: epoch 3's first step is done, its second not
        return step(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(tiny_shapes, tiny_teacher, part, method=method, **DEMO_LIKE))
    assert len(_history(part)) == 2
    # stopped half way, it is no result: no table or verdict reads it, and it is listed as unfinished
    assert collect_runs(tmp_path / "runs").empty
    assert unfinished_runs(tmp_path / "runs")[["run", "epochs_run", "epochs"]].values.tolist() == [[method, 2, 4]]
    monkeypatch.setattr(train, "train_step", step)
    if method == "both":  # a checkpoint from before adapters existed has no such key: it resumes all the same
        ckpt = torch.load(part / "last.pt", weights_only=True)
        torch.save({k: v for k, v in ckpt.items() if k != "adapters"}, part / "last.pt")
    fit(_cfg(tiny_shapes, tiny_teacher, part, method=method, **DEMO_LIKE, resume=True))
    _same_run(full, part)
    assert len(collect_runs(tmp_path / "runs")) == 1 and unfinished_runs(tmp_path / "runs").empty


def test_a_finished_run_whose_metrics_lag_its_checkpoint_is_brought_up_to_date(tiny_shapes, tiny_teacher, tmp_path):
    """Killed between its last epoch's last.pt and metrics.json, a run would stay unfinished for
    ever: resuming it, with nothing left to train, brings metrics.json up to date."""
    from kdlib.results import collect_runs

    out = tmp_path / "runs" / "none" / "seed0"
    fit(_cfg(tiny_shapes, tiny_teacher, out, epochs=2))
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps(metrics | {"epochs_run": 1, "total_seconds": 0.0}))
    assert collect_runs(tmp_path / "runs").empty
    again = fit(_cfg(tiny_shapes, tiny_teacher, out, epochs=2, resume=True))
    assert again["epochs_run"] == 2 and json.loads((out / "metrics.json").read_text())["epochs_run"] == 2
    assert again["best_miou"] == metrics["best_miou"] and len(collect_runs(tmp_path / "runs")) == 1


def test_same_seed_same_run_and_workers_do_not_change_it(tiny_shapes, tiny_teacher, tmp_path):
    fit(_cfg(tiny_shapes, tiny_teacher, tmp_path / "a", method="response", epochs=1, workers=0))
    fit(_cfg(tiny_shapes, tiny_teacher, tmp_path / "b", method="response", epochs=1, workers=2))
    ha, hb = _history(tmp_path / "a")[0], _history(tmp_path / "b")[0]
    assert ha["train_total"] == hb["train_total"] and ha["val_miou"] == hb["val_miou"]


def test_existing_run_folder_is_refused_without_resume_or_overwrite(tiny_shapes, tiny_teacher, tmp_path):
    out = tmp_path / "run"
    fit(_cfg(tiny_shapes, tiny_teacher, out, epochs=1))
    with pytest.raises(RunFolderError, match="--resume"):
        fit(_cfg(tiny_shapes, tiny_teacher, out, epochs=1))
    fit(_cfg(tiny_shapes, tiny_teacher, out, epochs=1, overwrite=True))


def test_plateau_scheduler_and_early_stopping_follow_val_miou(tiny_shapes, tiny_teacher, tmp_path):
    # patience 0: after every epoch without a better val mIoU the lr is multiplied by 0.2 (not
    # below min_lr), after a better one it stays; early stopping after 3 bad epochs in a row
    out = tmp_path / "es"
    metrics = fit(
        _cfg(
            tiny_shapes, tiny_teacher, out, epochs=40, lr=1e-4, lr_patience=0, min_lr=1e-7, early_stop=3, max_batches=1
        )
    )
    rows = _history(out)
    assert metrics["early_stopped"] and metrics["epochs_run"] == len(rows) < 40
    best, bad = -1.0, 0
    for row, after in zip(rows, rows[1:] + [None]):
        miou, lr = float(row["val_miou"]), float(row["lr"])
        improved = miou > best
        best, bad = (miou, 0) if improved else (best, bad + 1)
        if after is not None:
            expected = lr if improved else max(lr * 0.2, 1e-7)
            assert float(after["lr"]) == pytest.approx(expected, rel=1e-5)
    assert bad == 3 and metrics["best_epoch"] == len(rows) - 3
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])  # it did lower the lr


def test_cosine_schedule_anneals_per_epoch_to_zero(tiny_shapes, tiny_teacher, tmp_path):
    out = tmp_path / "cos"
    fit(_cfg(tiny_shapes, tiny_teacher, out, epochs=4, lr=2e-3, lr_schedule="cosine", max_batches=1))
    lrs = [float(r["lr"]) for r in _history(out)]
    # history.csv keeps 6 significant digits
    assert lrs == pytest.approx([2e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)], rel=1e-5)


def test_cli_rejects_bad_settings_before_work(tmp_path, capsys):
    cases = [
        (["--method", "hint"], "invalid choice"),
        (["--dataset", "coco"], "invalid choice"),
        (["--temperature", "0"], "must be > 0"),
        (["--alpha", "-1"], "must be >= 0"),
        (["--image-size", "100"], "multiple of 32"),
        (["--batch-size", "0"], "must be >= 1"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as err:
            main(["train", "--out", str(tmp_path / "x")] + extra)
        assert err.value.code == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_cli_train_and_evaluate(tiny_shapes, tiny_teacher, tmp_path, capsys):
    out = tmp_path / "cli"
    args = [
        "train",
        "--method",
        "response",
        "--data-root",
        str(tiny_shapes),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--teacher-weights",
        str(tiny_teacher),
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs_run"] == 1
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(out / "best.pt"),
                "--data-root",
                str(tiny_shapes),
                "--json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "mIoU" in table and "pixel accuracy" in table and "red striped disk" in table
    result = json.loads((tmp_path / "e.json").read_text())
    best = json.loads((out / "metrics.json").read_text())
    assert result["miou"] == pytest.approx(best["best_miou"], abs=1e-6)
    # a teacher checkpoint evaluates the same way (the upper-bound row)
    assert main(["evaluate", "--checkpoint", str(tiny_teacher), "--data-root", str(tiny_shapes)]) == 0
    assert "11,311,914 parameters" in capsys.readouterr().out


EVAL_SCRIPT = r"""
import json, os, sys, torch
from kdlib.checkpoints import load_model
from kdlib.config import Config
from kdlib.train import build_datasets, eval_loader, setup_runtime, validate
cfg = Config(dataset="shapes", data_root=sys.argv[1], workers=0, batch_size=4, channels_last=False).resolved()
rt = setup_runtime("cpu")
val_loader = eval_loader(cfg, rt, build_datasets(cfg)[1])
model = load_model(sys.argv[2])
result = validate(cfg, model, None, val_loader, rt)
if rt.rank == 0:
    with open(sys.argv[3], "w") as f:
        json.dump({"miou": result["val_miou"], "world": rt.world, "ce": result["val_ce"]}, f)
if torch.distributed.is_initialized():  # gloo's threads can abort a process that exits with them alive
    torch.distributed.destroy_process_group()
"""


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(processes: int = 2) -> list[str]:
    """The command that starts ``processes`` local ranks on a free loopback port."""
    ranks = [f"--nproc_per_node={processes}", "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    return [sys.executable, "-m", "torch.distributed.run", *ranks]


@pytest.mark.slow
def test_ddp_validation_equals_single_process(tiny_shapes, tiny_teacher, tmp_path):
    fit(_cfg(tiny_shapes, tiny_teacher, tmp_path / "run", epochs=1))
    ckpt = tmp_path / "run" / "best.pt"
    script = tmp_path / "eval.py"
    script.write_text(EVAL_SCRIPT)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(script), str(tiny_shapes), str(ckpt), str(tmp_path / "one.json")], check=True, env=env
    )
    subprocess.run(
        _torchrun() + [str(script), str(tiny_shapes), str(ckpt), str(tmp_path / "two.json")],
        check=True,
        env=env,
        timeout=300,
    )
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert one["world"] == 1 and two["world"] == 2
    assert two["miou"] == pytest.approx(one["miou"], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, extra",
    [
        ("both", []),
        ("pairwise", []),
        ("cwd", []),
        ("dist", ["--unlabeled-split", "teacher_train"]),
        ("cirkd", []),
        ("feature_student", []),
        ("response_ls", []),
        ("at", []),
    ],
)
def test_torchrun_trains_with_two_processes(tiny_shapes, tiny_teacher, tmp_path, method, extra):
    out = tmp_path / "ddp"
    cmd = _torchrun() + [
        "-m",
        "kdlib",
        "train",
        "--method",
        method,
        *extra,
        "--data-root",
        str(tiny_shapes),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--teacher-weights",
        str(tiny_teacher),
    ]
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300)
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["method"] == method
    column = {"both": "feature", "cirkd": "cirkd_region"}.get(method, method)
    assert len(_history(out)) == 1 and _history(out)[0][f"train_{column}"] != ""


def test_val_teacher_cache_is_exact_and_used(tiny_shapes, tiny_teacher, monkeypatch):
    from kdlib.models import CustomSegmentationModel
    from kdlib.train import ValTeacherCache, build_datasets, build_teacher, eval_loader, setup_runtime, validate

    cfg = _cfg(tiny_shapes, tiny_teacher, "unused", method="both").resolved()
    rt = setup_runtime("cpu")
    val_loader = eval_loader(cfg, rt, build_datasets(cfg)[1])
    torch.manual_seed(0)
    student, teacher = CustomSegmentationModel(21), build_teacher(cfg, rt.device)
    plain = validate(cfg, student, teacher, val_loader, rt)
    cache = ValTeacherCache(len(val_loader))
    first = validate(cfg, student, teacher, val_loader, rt, val_cache=cache)
    calls = []
    original = teacher.teacher_forward
    monkeypatch.setattr(teacher, "teacher_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    second = validate(cfg, student, teacher, val_loader, rt, val_cache=cache)
    assert not calls and len(cache.batches) == len(val_loader)
    for key in ("val_total", "val_response", "val_feature", "val_miou"):
        assert plain[key] == first[key] == second[key]
    tiny = ValTeacherCache(len(val_loader), limit_bytes=1000)
    validate(cfg, student, teacher, val_loader, rt, val_cache=tiny)
    assert not tiny.enabled and tiny.batches == []


def _train_command(root, teacher, out):
    """A run of the demo's schedule, shortened: cosine, several passes per epoch."""
    return [sys.executable, "-m", "kdlib", "train", "--data-root", str(root), "--out", str(out)] + [
        *("--method", "response", "--epochs", "4", "--batch-size", "2", "--workers", "0"),
        *("--lr", "0.01", "--lr-schedule", "cosine", "--train-repeats", "2"),
        *("--teacher-weights", str(teacher)),
    ]


@pytest.fixture(scope="module")
def uninterrupted(tiny_shapes, tiny_teacher, tmp_path_factory):
    """The run the killed ones must end as, trained once by the same command."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(_train_command(tiny_shapes, tiny_teacher, out), check=True, capture_output=True, timeout=300)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_killed_run_resumes_to_the_same_end(tiny_shapes, tiny_teacher, uninterrupted, tmp_path, sig):
    """A real subprocess of the demo's schedule killed after a checkpoint: SIGTERM exits cleanly
    (130) with advice, SIGKILL leaves last.pt intact (atomic writes); --resume then ends
    bit-identical to the same command left uninterrupted."""
    import signal
    import time

    def command(out):
        return _train_command(tiny_shapes, tiny_teacher, out)

    out = tmp_path / "run"
    proc = subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "history.csv").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    if sig == "SIGTERM":
        assert proc.returncode == 130 and "--resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    done = load_checkpoint(out / "last.pt")["epoch"]
    assert 1 <= done < 4
    subprocess.run(command(out) + ["--resume"], check=True, capture_output=True, timeout=300)
    assert [int(r["epoch"]) for r in _history(out)] == [1, 2, 3, 4]
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 4
    _same_run(uninterrupted, out)


def test_finished_run_of_another_teacher_is_trained_again(tiny_shapes, tiny_teacher, tmp_path, capsys):
    """A finished KD run is reused only while its teacher's weights are the ones it recorded;
    after the teacher changes (``make teacher``, other --teacher-weights) it is trained again,
    and ``make report`` refuses to build from it."""
    from kdlib.experiment import train_method
    from kdlib.notebooks import run_report

    runs = tmp_path / "runs"
    kw = dict(dataset="shapes", data_root=str(tiny_shapes), runs_dir=str(runs), profile="smoke")
    train_method("response", teacher_weights=str(tiny_teacher), **kw)
    config = json.loads((runs / "response" / "seed0" / "config.json").read_text())
    assert len(config["teacher_sha256"]) == 64
    train_method("response", teacher_weights=str(tiny_teacher), **kw)
    assert "reused" in capsys.readouterr().out

    other = tmp_path / "other.pt"
    ckpt = torch.load(tiny_teacher, weights_only=True)
    ckpt["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, other)
    train_method("response", teacher_weights=str(other), **kw)
    out = capsys.readouterr().out
    assert "is stale, it was trained with other teacher weights, not other.pt" in out and "reused" not in out
    assert (
        json.loads((runs / "response" / "seed0" / "config.json").read_text())["teacher_sha256"]
        != config["teacher_sha256"]
    )

    # another setting that defines the run: trained again, not reused or resumed
    train_method("response", teacher_weights=str(other), lr=5e-4, **kw)
    out = capsys.readouterr().out
    assert "is stale, it was trained with other settings (lr 0.001 -> 0.0005)" in out and "reused" not in out
    assert json.loads((runs / "response" / "seed0" / "config.json").read_text())["lr"] == 5e-4

    # make report checks against the shipped teacher, which trained none of these runs
    assert run_report("shapes", str(tiny_shapes), profile="smoke", runs_dir=runs) == 1
    assert "stale" in capsys.readouterr().err


def test_train_repeats_passes_over_the_split_with_fresh_order_and_augmentation():
    from kdlib.train import SeededSampler, sample_seed

    data = list(range(8))
    plain = SeededSampler(data, num_replicas=1, rank=0, seed=3)
    plain.set_epoch(2)
    assert list(plain) == [(i, sample_seed(3, 2, i)) for i, _ in list(plain)]
    repeated = SeededSampler(data, repeats=3, num_replicas=1, rank=0, seed=3)
    repeated.set_epoch(2)
    pairs = list(repeated)
    assert len(pairs) == len(repeated) == 24
    assert sorted(i for i, _ in pairs) == sorted(data * 3)
    assert len({s for _, s in pairs}) == 24  # every pass augments anew
    passes = [[i for i, _ in pairs[k * 8 : (k + 1) * 8]] for k in range(3)]
    assert passes[0] != passes[1] or passes[1] != passes[2]  # and shuffles anew
    assert repeated.epoch == 2  # the sampler's own epoch is left as set
    one = SeededSampler(data, repeats=1, num_replicas=1, rank=0, seed=3)
    one.set_epoch(2)
    assert list(one) == list(plain)  # repeats=1 is the plain sampler


def test_profile_jobs_train_seeds_side_by_side(tiny_shapes, tmp_path, monkeypatch, capsys):
    from kdlib import experiment, profiles

    smoke = profiles.PROFILES["smoke"] | {"jobs": 2, "seeds": [0, 1]}
    monkeypatch.setitem(profiles.PROFILES, "smoke", smoke)
    runs = experiment.train_method(
        "none", dataset="shapes", data_root=str(tiny_shapes), runs_dir=str(tmp_path), profile="smoke"
    )
    assert sorted(runs["seed"]) == [0, 1]
    out = capsys.readouterr().out
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"2 runs, 2 at a time with {threads} thread(s) each" in out
    assert "seed 0: best val mIoU" in out and "seed 1: best val mIoU" in out
    # each finished run says where the batch stands: the first that 1 more is running, the last the total time
    assert re.search(r"\| 1 of 2 done, 1 running, about \d+ s left\n", out), out
    assert re.search(r"\| 2 of 2 done in \d+ s\n", out), out
    for seed in (0, 1):
        config = json.loads((tmp_path / "none" / f"seed{seed}" / "config.json").read_text())
        assert config["seed"] == seed and config["environment"]["cpu_threads"] == threads


DDP_STEP_SCRIPT = r"""
import copy, json, sys, torch
import torch.distributed as dist
from torch import nn
from kdlib.checkpoints import load_model
from kdlib.config import Config
from kdlib.models import TeacherWrapper, build_model
from kdlib.methods import get
from kdlib.train import Runtime, build_adapters, kd_parameters, setup_runtime, train_step

method = get(sys.argv[3])
cfg = Config(method=method.name, dataset="shapes", teacher_weights=sys.argv[1], channels_last=False).resolved()
rt = setup_runtime("cpu")
torch.manual_seed(0)
student, teacher = build_model("student"), TeacherWrapper(load_model(sys.argv[1]))
adapters = build_adapters(method, student, teacher, "cpu")
reference = copy.deepcopy((student, teacher, adapters))
batches = [(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(10 + r)),
            torch.randint(0, 21, (2, 64, 64), generator=torch.Generator().manual_seed(20 + r))) for r in range(2)]


def step(student, teacher, adapters, batch, model=None, rt=Runtime(torch.device("cpu"))):  # default: one process
    params = list(student.parameters()) + kd_parameters(method, teacher, adapters)
    optimizer = torch.optim.SGD(params, lr=0.0)
    train_step(cfg, model or student, teacher, optimizer, *batch, rt=rt, adapters=adapters)
    return [p.grad.clone() for p in kd_parameters(method, teacher, adapters)]


got = step(student, teacher, adapters, batches[rt.rank], nn.parallel.DistributedDataParallel(student), rt)
if rt.rank == 0:  # what one process computes for each rank's batch, averaged
    each = [step(*copy.deepcopy(reference), batch) for batch in batches]
    expected = [(a + b) / 2 for a, b in zip(*each)]
    json.dump({"max_diff": max(float((g - e).abs().max()) for g, e in zip(got, expected)),
               "scale": max(float(e.abs().max()) for e in expected),
               "rank_differs": max(float((a - b).abs().max()) for a, b in zip(*each))}, open(sys.argv[2], "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["feature", "cirkd", "feature_student"])  # the teacher's projections; adapters
def test_ddp_averages_the_projections_gradients_like_the_students(tiny_teacher, tmp_path, method):
    """The projections and adapters live outside the DDP-wrapped student, so the trainer
    all-reduces their gradients itself: two ranks with different batches must end up with the
    mean of the two gradients one process computes, not their sum and not their own."""
    script, out = tmp_path / "step.py", tmp_path / "out.json"
    script.write_text(DDP_STEP_SCRIPT)
    cmd = _torchrun() + [str(script), str(tiny_teacher), str(out), method]
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300)
    result = json.loads(out.read_text())
    assert result["rank_differs"] > 10 * result["max_diff"]  # the two batches pull differently
    assert result["max_diff"] <= 1e-5 * max(1.0, result["scale"]), result


def test_the_settings_reach_the_objective_that_trains_the_student(tiny_teacher):
    """T, α, β and scale_by_t2 of the Config are the ones the training step optimises, and a
    few steps lower its loss."""
    import copy

    from kdlib.checkpoints import load_model
    from kdlib.methods import distillation_loss
    from kdlib.models import TeacherWrapper, build_model
    from kdlib.train import train_step

    torch.manual_seed(0)
    student, teacher = build_model("student"), TeacherWrapper(load_model(tiny_teacher))
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 21, (2, 64, 64))
    totals = []
    for settings in ({}, {"temperature": 2.0, "alpha": 0.4, "beta": 0.9, "scale_by_t2": True}):
        cfg = Config(method="both", dataset="shapes", channels_last=False, **settings).resolved()
        s, t = copy.deepcopy(student), copy.deepcopy(teacher)
        expected, _ = distillation_loss(
            "both", s(x), t(x), y, cfg.alpha, cfg.beta, cfg.temperature, cfg.scale_by_t2
        )  # train mode, as the step runs it
        optimizer = torch.optim.Adam(list(s.parameters()) + list(t.projections.parameters()), lr=1e-3)
        steps = [float(train_step(cfg, s, t, optimizer, x, y)["total"]) for _ in range(8)]
        assert steps[0] == pytest.approx(expected.item(), rel=1e-5)
        assert steps[-1] < 0.95 * steps[0]
        totals.append(steps[0])
    assert totals[0] != pytest.approx(totals[1], rel=1e-3)


@pytest.mark.parametrize("method", ["both", "pairwise", "cwd", "dist", "cirkd"])
def test_the_training_step_reads_nothing_back_from_its_tensors(tiny_shapes, tiny_teacher, method):
    """On a GPU every .item(), float(), .tolist() or truth test of a device tensor waits for the
    device. Through the steps of an epoch the trainer, the losses and the models make none: the
    loss parts are summed on the device and read once per epoch (LossTotals.means), and the
    augmentation's reads are of the parameters the loader drew on the host."""
    from torch.overrides import TorchFunctionMode

    from kdlib.augment import prepare_batch
    from kdlib.train import (
        LossTotals,
        build_adapters,
        build_datasets,
        build_teacher,
        kd_parameters,
        setup_runtime,
        train_loader,
        train_step,
    )

    class HostReads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.where = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
                frame, stack = sys._getframe(1), []
                while frame is not None:
                    stack.append(frame.f_code.co_filename)
                    frame = frame.f_back
                # the loader and its sampler work on the host; so does Adam's step count
                if not any("/torch/optim/" in f or "/torch/utils/data/" in f for f in stack):
                    self.where.append(next(f for f in stack if "/kdlib/" in f or "/tests/" in f))
            return func(*args, **(kwargs or {}))

    from kdlib.train import UnlabeledBatches, build_unlabeled, with_unlabeled

    cfg = _cfg(tiny_shapes, tiny_teacher, "unused", method=method, unlabeled_split="teacher_train").resolved()
    rt = setup_runtime("cpu")
    loader, _ = train_loader(cfg, rt, build_datasets(cfg)[0])
    extra = UnlabeledBatches(cfg, rt, build_unlabeled(cfg), len(loader)).epoch(1)
    torch.manual_seed(0)
    from kdlib.models import build_model

    student, teacher = build_model("student"), build_teacher(cfg, rt.device)
    adapters = build_adapters(METHODS[method], student, teacher, rt.device)
    optimizer = torch.optim.Adam(
        list(student.parameters()) + kd_parameters(METHODS[method], teacher, adapters), lr=1e-3
    )
    totals = LossTotals(rt.device)
    with HostReads() as reads:
        for step, batch in enumerate(loader):
            labelled = prepare_batch(batch, rt.device, cfg.channels_last)
            x, y, cached, kd_mask = with_unlabeled(labelled, prepare_batch(next(extra), rt.device, cfg.channels_last))
            parts = train_step(
                cfg, student, teacher, optimizer, x, y, cached=cached, kd_mask=kd_mask, rt=rt, adapters=adapters
            )
            totals.add(parts, x.shape[0], step)
    assert {f.split("/kdlib/")[-1] for f in reads.where} <= {"augment.py"}, reads.where
    assert totals.means(rt, 1, "train")["total"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "method, amp", [("both", False), ("pairwise", True), ("cwd", True), ("dist", True), ("cirkd", True)]
)
def test_the_training_step_never_synchronises_with_the_gpu(tiny_shapes, tiny_teacher, method, amp):
    """On a GPU: the steps of an epoch under torch.cuda.set_sync_debug_mode("error"), which
    raises on any operation that makes the host wait for the device (the new methods under bf16
    autocast, --amp)."""
    from kdlib.augment import prepare_batch
    from kdlib.models import build_model
    from kdlib.train import (
        LossTotals,
        build_adapters,
        build_datasets,
        build_teacher,
        kd_parameters,
        setup_runtime,
        train_loader,
        train_step,
    )

    cfg = _cfg(tiny_shapes, tiny_teacher, "unused", method=method, device="cuda", amp=amp).resolved()
    rt = setup_runtime("cuda")
    loader, _ = train_loader(cfg, rt, build_datasets(cfg)[0])
    student, teacher = build_model("student").to(rt.device), build_teacher(cfg, rt.device)
    adapters = build_adapters(METHODS[method], student, teacher, rt.device)
    optimizer = torch.optim.Adam(
        list(student.parameters()) + kd_parameters(METHODS[method], teacher, adapters), lr=1e-3
    )
    totals, batches = LossTotals(rt.device), list(loader)
    x, y, cached = prepare_batch(batches[0], rt.device, True)
    # warm-up: allocations, cuDNN choices
    train_step(cfg, student, teacher, optimizer, x, y, cached=cached, rt=rt, adapters=adapters)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, batch in enumerate(batches):
            x, y, cached = prepare_batch(batch, rt.device, True)
            parts = train_step(cfg, student, teacher, optimizer, x, y, cached=cached, rt=rt, adapters=adapters)
            totals.add(parts, x.shape[0], step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert totals.means(rt, 1, "train")["total"] > 0


def test_loss_totals_average_by_samples_and_name_the_first_bad_step():
    from kdlib.train import LossTotals, NonFiniteLossError, setup_runtime

    rt = setup_runtime("cpu")
    totals = LossTotals(rt.device)
    totals.add({"ce": torch.tensor(1.0), "total": torch.tensor(2.0)}, 4, 0)
    totals.add({"ce": torch.tensor(4.0), "total": torch.tensor(5.0)}, 2, 1)
    assert totals.means(rt, 1, "train") == pytest.approx({"ce": 2.0, "total": 3.0})  # (4*1 + 2*4) / 6
    totals.add({"ce": torch.tensor(float("nan")), "total": torch.tensor(1.0)}, 2, 2)
    totals.add({"ce": torch.tensor(float("inf")), "total": torch.tensor(float("inf"))}, 2, 3)
    with pytest.raises(NonFiniteLossError, match=r"\['ce'\] became non-finite at epoch 7, step 2"):
        totals.means(rt, 7, "train")


NAN_ON_ONE_RANK = r"""
import sys, torch
import torch.distributed as dist
from kdlib.train import LossTotals, NonFiniteLossError, setup_runtime

rt = setup_runtime("cpu")
totals = LossTotals(rt.device)
for step in range(4):
    bad = rt.rank == 1 and step == 3
    totals.add({"ce": torch.tensor(float("nan") if bad else 1.0)}, 2, step)
try:
    totals.means(rt, 5, "train")
    message = "no error"
except NonFiniteLossError as error:
    message = str(error)
open(f"{sys.argv[1]}.{rt.rank}", "w").write(message)
dist.barrier()  # both ranks reach the next collective: neither is left waiting
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    script = tmp_path / "nan.py"
    script.write_text(NAN_ON_ONE_RANK)
    cmd = _torchrun() + [str(script), str(tmp_path / "out")]
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=120)
    assert "['ce'] became non-finite at epoch 5, step 3" in (tmp_path / "out.1").read_text()
    assert "['ce'] became non-finite at epoch 5 on another rank" in (tmp_path / "out.0").read_text()


def test_unlabeled_images_reach_the_distillation_terms_only(tiny_shapes, tiny_teacher, tmp_path):
    """An unlabeled split adds as many images per step as the labeled batch has, their masks
    void: the cross entropy is that of the labeled images alone, the distillation term that of
    all pixels of both; and an epoch's unlabeled batches depend on the epoch only."""
    from kdlib.augment import prepare_batch
    from kdlib.conventions import VOID
    from kdlib.losses import cwd_loss, supervised_loss
    from kdlib.models import build_model
    from kdlib.train import (
        UnlabeledBatches,
        build_datasets,
        build_teacher,
        build_unlabeled,
        setup_runtime,
        train_loader,
        with_unlabeled,
    )

    cfg = _cfg(tiny_shapes, tiny_teacher, "unused", method="cwd", unlabeled_split="teacher_train").resolved()
    rt = setup_runtime("cpu")
    unlabeled = build_unlabeled(cfg)
    assert len(unlabeled) == 4 and all(m is None for m in unlabeled.masks)  # no mask is read
    loader, sampler = train_loader(cfg, rt, build_datasets(cfg)[0])
    batches = UnlabeledBatches(cfg, rt, unlabeled, len(loader))
    first = [b["image"].clone() for b in batches.epoch(3)]
    assert len(first) >= len(loader) and all(torch.equal(a, b["image"]) for a, b in zip(first, batches.epoch(3)))
    assert not all(torch.equal(a, b["image"]) for a, b in zip(first, batches.epoch(4)))
    labelled = prepare_batch(next(iter(loader)), "cpu", False)
    extra = prepare_batch(next(batches.epoch(1)), "cpu", False)
    assert (extra[1] == VOID).all()
    x, y, _, kd_mask = with_unlabeled(labelled, extra)
    n = labelled[0].shape[0]
    assert torch.equal(y[:n], labelled[1]) and (y[n:] == VOID).all()
    assert torch.equal(kd_mask[:n], labelled[1] != VOID) and kd_mask[n:].all()
    student, teacher = build_model("student").eval(), build_teacher(cfg, rt.device)
    with torch.no_grad():
        from kdlib.methods import objective

        z_s, z_t = student(x), teacher(x, with_features=False)
        _, parts = objective(cfg)(z_s, z_t, y, kd_mask)
    assert parts["ce"].item() == pytest.approx(supervised_loss(z_s["out"][:n], labelled[1]).item(), rel=1e-5)
    assert parts["cwd"].item() == pytest.approx(cwd_loss(z_s["out"], z_t["out"], 4.0, kd_mask).item(), rel=1e-5)


def test_an_unlabeled_split_trains_and_is_recorded_and_cached(tiny_shapes, tiny_teacher, tmp_path):
    out = tmp_path / "unlabeled"
    fit(
        _cfg(
            tiny_shapes,
            tiny_teacher,
            out,
            method="dist",
            epochs=1,
            unlabeled_split="teacher_train",
            teacher_cache=str(tmp_path / "cache"),
        )
    )
    config = json.loads((out / "config.json").read_text())
    assert config["split_sizes"]["teacher_train"] == 4 and config["unlabeled_split"] == "teacher_train"
    assert set(config["teacher_cache_cards"]) == {"train", "val", "teacher_train"}  # the cache serves them too
    assert config["teacher_source"] == "cached"
    alone = tmp_path / "alone"
    fit(_cfg(tiny_shapes, tiny_teacher, alone, method="dist", epochs=1, teacher_cache=str(tmp_path / "cache")))
    with_images, without = _history(out)[0], _history(alone)[0]
    assert with_images["val_miou"] != without["val_miou"]  # the extra images changed what was learnt
    assert float(with_images["train_images_per_s"]) > 0


def test_settings_that_cannot_work_together_are_refused():
    with pytest.raises(ValueError, match="unlabeled_split='teacher_train' needs a KD method"):
        Config(method="none", unlabeled_split="teacher_train").validate()
    with pytest.raises(ValueError, match="teacher_cache=.*pairwise"):
        Config(method="pairwise", teacher_cache="c").validate()
    Config(method="cwd", teacher_cache="c").validate()  # logits only: the cache serves it
    with pytest.raises(ValueError, match="pairwise_grid=0"):
        Config(method="pairwise", pairwise_grid=0).validate()
    assert Config(method="cwd").resolved().beta == 3.0 and Config(method="cwd", beta=0.5).resolved().beta == 0.5
    # a run without --out goes to runs/<method>, not into another method's folder
    assert Config(method="both").resolved().out == "runs/both" and Config(out="x").resolved().out == "x"


def test_variant_runs_are_their_method_with_its_settings(tmp_path):
    from kdlib.methods import is_extra
    from kdlib.profiles import extra_runs, run_config

    kw = dict(dataset="shapes", data_root="data/shapes", runs_dir=tmp_path)
    t2 = run_config("response_t2", 0, **kw)
    assert (t2.method, t2.scale_by_t2, t2.out) == ("response", True, str(tmp_path / "response_t2" / "seed0"))
    more = run_config("cwd_unlabeled", 3, **kw)
    assert (more.method, more.unlabeled_split, more.seed) == ("cwd", "teacher_train", 3)
    with pytest.raises(ValueError, match="no unlabeled split; pass unlabeled_split="):
        run_config("cwd_unlabeled", 0, dataset="voc", data_root="voc", runs_dir=tmp_path)
    voc = run_config("cwd_unlabeled", 0, dataset="voc", data_root="voc", runs_dir=tmp_path, unlabeled_split="sbd")
    assert voc.unlabeled_split == "sbd"
    extra = {"response_t2", "pairwise", "cwd", "dist", "response_ls", "at", "feature_student", "cirkd"}
    extra |= {"response_ls_ce1", "at_beta1000"}  # the other readings of two papers' settings
    assert set(extra_runs()) == extra and is_extra("dist_unlabeled")
    ls = run_config("response_ls_ce1", 0, **kw).resolved()
    assert (ls.method, ls.alpha, ls.beta, ls.temperature) == ("response_ls", 1.0, 9.0, 2.0)
    at = run_config("at_beta1000", 0, **kw).resolved()
    assert (at.method, at.alpha, at.beta) == ("at", 1.0, 1000.0)
    assert not any(is_extra(m) for m in ("none", "response", "feature", "both", "response_cached"))
