"""Runs remember the data they were trained on: a finished run is reused only on the same data
(settings, split sizes and, since runs record it, each split's fingerprint), and `make report`
refuses a run whose data changed, naming the split."""

import json
import os

import pytest

from kdlib import experiment, results, shapes, sweep
from kdlib.data import split_fingerprint

SIZES = dict(teacher_train=4, train=16, val=12, size=64, progress=False)  # the smoke profile's benchmark


def test_a_finished_run_is_not_reused_on_another_draw_of_the_benchmark(tmp_path, capsys):
    from kdlib.notebooks import run_report

    data, runs = tmp_path / "shapes", tmp_path / "runs"
    shapes.generate(data, seed=0, **SIZES)
    kw = dict(dataset="shapes", data_root=str(data), runs_dir=str(runs), profile="smoke")
    experiment.train_method("none", **kw)
    experiment.train_method("cwd", **kw)  # a row of `make methods`, distilled from the shipped teacher
    config = json.loads((runs / "none" / "seed0" / "config.json").read_text())
    assert set(config["data_fingerprints"]) == {"train", "val"}
    assert config["data_fingerprints"]["train"].startswith("shapes v2 seed 0 64px, 16 ids ")
    capsys.readouterr()
    experiment.train_method("none", **kw)
    assert "finished run reused" in capsys.readouterr().out

    # the same files regenerated (new modification times) are the same data: still reused
    for path in data.rglob("*.jpg"):
        os.utime(path, ns=(1, 1))
    experiment.train_method("none", **kw)
    assert "finished run reused" in capsys.readouterr().out

    # another draw, the same split sizes: make report refuses it, naming the split; make demo retrains it
    shapes.generate(data, seed=1, **SIZES)
    assert run_report("shapes", str(data), profile="smoke", runs_dir=runs) == 1
    err = capsys.readouterr().err
    assert "none/seed0: it was trained on other data: the train split (shapes v2 seed 0 64px" in err
    assert "-> shapes v2 seed 1 64px" in err and "the val split (" in err
    assert "cwd/seed0: it was trained on other data: the train split" in err
    assert "Run `make demo` and `make methods` (same DATASET/PROFILE) first." in err
    experiment.train_method("none", **kw)
    out = capsys.readouterr().out
    assert "is stale, it was trained on other data: the train split" in out and "reused" not in out
    again = json.loads((runs / "none" / "seed0" / "config.json").read_text())["data_fingerprints"]
    assert again["train"].startswith("shapes v2 seed 1 64px") and again["train"] != config["data_fingerprints"]["train"]


def test_runs_recorded_before_fingerprints_are_reused_and_it_is_said_once(tmp_path, capsys):
    data, runs = tmp_path / "shapes", tmp_path / "runs"
    shapes.generate(data, seed=0, **SIZES)
    kw = dict(dataset="shapes", data_root=str(data), runs_dir=str(runs), profile="smoke")
    experiment.train_method("none", seeds=[0, 1], **kw)
    for seed in (0, 1):  # as kdlib wrote config.json before it recorded fingerprints
        path = runs / "none" / f"seed{seed}" / "config.json"
        config = json.loads(path.read_text())
        del config["data_fingerprints"]
        path.write_text(json.dumps(config))
    results._said.clear()
    capsys.readouterr()
    experiment.train_method("none", seeds=[0, 1], **kw)
    experiment.train_method("none", seeds=[0, 1], **kw)
    out = capsys.readouterr().out
    assert out.count("[none] 2 finished runs reused (seeds 0, 1): best val mIoU") == 2  # one line per call
    assert "training it again" not in out
    assert out.count("are checked against the data by split size only") == 1


def test_a_voc_split_fingerprint_follows_its_ids_and_files(tmp_path):
    from test_data import write_voc

    voc = write_voc(tmp_path)
    lists = voc / "ImageSets" / "Segmentation"
    before = split_fingerprint("voc", tmp_path, "train")
    assert before == split_fingerprint("voc", voc, "train")  # the same folder, named at another level
    assert before.startswith(f"{len(lists.joinpath('train.txt').read_text().split())} ids ")

    # the same count of other ids (here: one id listed twice in place of another)
    ids = lists.joinpath("train.txt").read_text().split()
    lists.joinpath("train.txt").write_text("\n".join([ids[0], *ids[:-1]]) + "\n")
    edited = split_fingerprint("voc", tmp_path, "train")
    assert edited != before and edited.split(" ids")[0] == before.split(" ids")[0]
    lists.joinpath("train.txt").write_text("\n".join(ids) + "\n")
    assert split_fingerprint("voc", tmp_path, "train") == before

    # an image or a mask replaced in place: its modification time moves
    image, mask = voc / "JPEGImages" / f"{ids[1]}.jpg", voc / "SegmentationClass" / f"{ids[1]}.png"
    for path in (image, mask):
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        assert split_fingerprint("voc", tmp_path, "train") != before, path.name
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert split_fingerprint("voc", tmp_path, "train") == before
    # an unlabeled split reads no masks, so a mask does not enter its fingerprint
    unlabeled = split_fingerprint("voc", tmp_path, "train", labelled=False)
    os.utime(mask, ns=(1, 1))
    assert split_fingerprint("voc", tmp_path, "train", labelled=False) == unlabeled
    with pytest.raises(FileNotFoundError):
        split_fingerprint("voc", tmp_path, "no_such_split")


def test_make_sweep_writes_every_cell_of_its_grid_with_no_kd_on_the_same_seeds(tmp_path):
    """sweep.sweep_table (chapter 9 calls it): one no-KD row per seed, one row per method,
    cell and seed, each trained with that cell's T and β (read back from its config.json), and
    sweep.csv holding exactly the returned table."""
    import pandas as pd

    data, runs = tmp_path / "shapes", tmp_path / "runs"
    shapes.generate(data, seed=0, **SIZES)
    table_path = tmp_path / "report" / "tables" / "sweep.csv"
    table = sweep.sweep_table(
        ["cwd"],
        dataset="shapes",
        data_root=str(data),
        runs_dir=runs,
        committed_dir=tmp_path / "report" / "runs",
        table_path=table_path,
        profile="smoke",
        temperatures=(1.0,),
        betas=(0.3, 0.7),
        seeds=(0,),
    )
    assert list(table.columns) == sweep.SWEEP_COLUMNS
    assert table["method"].tolist() == ["none", "cwd", "cwd"] and table["temperature"].isna().tolist()[0]
    for t, b in ((1.0, 0.3), (1.0, 0.7)):
        config = json.loads((runs / "sweep" / f"T{t:g}_b{b:g}" / "cwd" / "seed0" / "config.json").read_text())
        assert (config["temperature"], config["beta"], config["alpha"]) == (t, b, 1.0)  # α stays CWD's own
    written = pd.read_csv(table_path)
    pd.testing.assert_frame_equal(written, table.reset_index(drop=True), check_dtype=False)
    assert sweep.report_cell() == (4.0, 0.3)  # Table 1's T and β


def test_the_best_kd_method_is_the_highest_mean_among_methods_not_variants():
    """The rule that picks the unlabeled-images row and the sweep's second method."""
    import pandas as pd

    rows = {"none": [0.9, 0.9], "cwd": [0.30, 0.20], "dist": [0.26, 0.26], "cwd_unlabeled": [0.5, 0.5]}
    rows |= {"response_t2": [0.6, 0.6], "response": [0.1, 0.5]}  # variants never win; response's mean is 0.3
    runs = pd.DataFrame([{"run": m, "seed": s, "miou": v} for m, vs in rows.items() for s, v in enumerate(vs)])
    assert experiment.best_kd_method(runs) == "response"  # 0.30 against dist 0.26 and cwd 0.25
    assert experiment.best_kd_method(runs, among=("pairwise", "cwd", "dist")) == "dist"  # 0.26 > 0.25
    with pytest.raises(ValueError, match="no finished run of \\['pairwise'\\]"):
        experiment.best_kd_method(runs, among=("pairwise",))


def test_a_broken_card_or_a_cut_off_generation_is_never_taken_for_a_draw(tmp_path, monkeypatch):
    from kdlib.data import DataError

    data = shapes.generate(tmp_path / "shapes", seed=0, **SIZES)
    card = data / "benchmark.json"
    card.write_text(json.dumps({"name": "shapes"}))  # no version, seed or size
    with pytest.raises(DataError, match="benchmark.json is not a benchmark card.*python -m kdlib shapes --out"):
        split_fingerprint("shapes", data, "train")
    card.write_text("{not json")
    with pytest.raises(DataError, match="benchmark.json is not a benchmark card"):
        split_fingerprint("shapes", data, "train")

    # another draw cut off half way leaves no card vouching for the old one's images
    card.unlink()
    shapes.generate(data, seed=0, **SIZES)
    assert card.is_file()
    real = shapes.render_sample

    def cut_off(seed, split, index, size=64):
        if split == "train" and index == 3:
            raise KeyboardInterrupt
        return real(seed, split, index, size)

    monkeypatch.setattr(shapes, "render_sample", cut_off)
    with pytest.raises(KeyboardInterrupt):
        shapes.generate(data, seed=1, **SIZES)
    assert not card.exists()


def test_make_report_checks_a_voc_unlabeled_row_with_the_split_it_was_given(tmp_path, capsys):
    """VOC has no unlabeled split of its own: a `<method>_unlabeled` run was given one, and make
    report checks the run against that split instead of stopping at the missing default."""
    from test_data import write_voc

    from kdlib.notebooks import run_report

    write_voc(tmp_path / "voc")
    run = tmp_path / "runs" / "cwd_unlabeled" / "seed0"
    run.mkdir(parents=True)
    config = {"method": "cwd", "seed": 0, "dataset": "voc", "unlabeled_split": "sbd_extra", "lr": 0.5}
    (run / "config.json").write_text(json.dumps(config))
    assert run_report("voc", str(tmp_path / "voc"), profile="smoke", runs_dir=tmp_path / "runs") == 1
    err = capsys.readouterr().err
    assert "cwd_unlabeled/seed0: it was trained with other settings (lr 0.5 -> 0.001)" in err
    assert "no unlabeled split" not in err


def test_progress_counts_the_runs_and_estimates_the_time_left_at_the_pace_so_far(monkeypatch):
    clock = iter([0.0, 120.0, 240.0, 250.0])  # start; three runs finished at 2 min, 4 min, 4 min 10 s
    monkeypatch.setattr(experiment.time, "perf_counter", lambda: next(clock))
    progress = experiment.RunProgress(4, 2)
    # 120 s per finished run so far, 3 left: 360 s; then 2 left at 120 s each; then 1 left at 83 s each
    assert progress.finished() == " | 1 of 4 done, 2 running, about 6 min left"
    assert progress.finished() == " | 2 of 4 done, 2 running, about 4 min left"
    assert progress.finished() == " | 3 of 4 done, 1 running, about 83 s left"


def test_a_sweep_says_its_reused_runs_in_one_line(tmp_path, capsys):
    data, runs = tmp_path / "shapes", tmp_path / "runs"
    shapes.generate(data, seed=0, **SIZES)
    kw = dict(dataset="shapes", data_root=str(data), runs_dir=runs, profile="smoke", seeds=(0,))
    sweep.sweep("cwd", temperatures=(1.0, 2.0), betas=(0.3,), **kw)
    capsys.readouterr()
    table = sweep.sweep("cwd", temperatures=(1.0, 2.0), betas=(0.3,), **kw)
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("[cwd sweep] 2 finished runs reused (seeds 0): best val mIoU")
    assert len(table) == 2
