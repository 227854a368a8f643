"""python -m kdlib bench on a tiny benchmark: every number of issue #6 is there and sane."""

import json

import pytest

from kdlib.bench import TARGETS, format_table, verdict
from kdlib.cli import main


def test_bench_writes_every_ratio(tiny_shapes, tiny_teacher, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--setting",
                "shapes",
                "--data-root",
                str(tiny_shapes),
                "--batch-size",
                "4",
                "--repeats",
                "2",
                "--device",
                "cpu",
                "--workers",
                "0",
                "--teacher-weights",
                str(tiny_teacher),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    r = report["settings"]["shapes"]
    assert r["student"]["parameters"] == 3_689_061 and r["teacher_model"]["parameters"] == 11_311_914
    assert 0.05 < r["student"]["gflops"] < r["teacher_model"]["gflops"]
    for who in ("student", "teacher"):
        assert r["inference"][who]["latency_ms_batch1"] > 0 and r["inference"][who]["images_per_s"] > 0
    kd = {"response", "feature", "both", "pairwise", "cwd", "dist", "response_ls", "at", "feature_student", "cirkd"}
    methods = kd | {"none", "response_cached"}
    assert set(r["train_images_per_s"]) == methods
    assert all(v["compute_only"] > 0 and v["end_to_end"] > 0 for v in r["train_images_per_s"].values())
    assert set(report["kd_overhead_ratio"]["shapes"]) == kd
    # sanity, not speed (make bench measures that): two rounds on a busy machine can double one step
    assert all(0.3 < v < 5 for v in report["kd_overhead_ratio"]["shapes"].values())
    # without loader workers the loader is timed for the plain step and the cached variant; the rest derived
    assert set(report["input_pipeline_ratio"]["shapes"]) == {"none", "response_cached"} == set(r["loader_timed"])
    assert set(r["end_to_end_derived"]) == kd
    assert 0.2 < report["cached_kd_epoch_ratio"]["shapes"] < 5
    assert r["cache"]["bytes_per_image"] == 21 * 16 * 16 * 2
    series = r["steadiness"]["series"]
    assert len(series) == r["steadiness"]["probe_ms"]["n"] and series == sorted(series)
    assert set(report["targets"]) == set(TARGETS) and report["machine"]["torch"]
    printed = capsys.readouterr().out
    assert format_table(report) in printed and "cached response-KD epoch" in printed
    # every ratio carries its verdict, and the machine's steadiness is said before the figures
    steady = r["steadiness"]
    assert steady["probe_ms"]["n"] >= 2 * 8 and 0 < steady["cpu_share"] <= 1.2 and "machine: " in printed
    for key in ("kd_overhead_ratio", "input_pipeline_ratio"):
        for s in r["spread"][key].values():
            assert s["lo"] <= s["median"] <= s["hi"] and verdict(key, s) in printed
    page = out.with_suffix(".md").read_text()
    assert page.startswith("# make bench") and all(f"| {m} |" in page for m in methods)
    assert "derived: step + plain step's input" in page


def test_a_derived_end_to_end_rate_adds_the_plain_steps_input_time():
    from kdlib.bench import end_to_end_rate

    # by hand: the plain step computes a batch of 4 in 0.1 s (0.025 s an image) and runs 20 img/s
    # through the loader (0.05 s an image): 0.025 s of input per image. A 0.4 s KD step (0.1 s an
    # image) then takes 0.125 s an image end to end: 8 img/s
    assert end_to_end_rate(0.4, 4, 20.0, 0.1) == pytest.approx(8.0)
    assert end_to_end_rate(0.1, 4, 20.0, 0.1) == pytest.approx(20.0)  # the plain step itself
    # a loader path timed faster than the batch in memory (noise) adds no input time, never a negative one
    assert end_to_end_rate(0.4, 4, 50.0, 0.1) == pytest.approx(10.0)


def test_every_bench_figure_carries_its_spread_and_latency_its_floor(tiny_shapes, tiny_teacher, tmp_path):
    from kdlib.bench import SETTINGS, spread

    # four values: the whole range is the median's interval, at 1 - 2/16 coverage
    assert spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "q1": 1.75, "q3": 4.75, "n": 4} | {
        "lo": 1.0,
        "hi": 10.0,
        "coverage": 0.875,
    }
    out = tmp_path / "bench.json"
    args = ["bench", "--setting", "shapes", "--data-root", str(tiny_shapes), "--batch-size", "4", "--repeats", "3"]
    args += ["--device", "cpu"]  # the knobs below are a CPU's
    assert main(args + ["--workers", "0", "--teacher-weights", str(tiny_teacher), "--out", str(out)]) == 0
    r = json.loads(out.read_text())["settings"]["shapes"]
    for key in ("kd_overhead_ratio", "input_pipeline_ratio"):
        for method, value in r[key].items():
            s = r["spread"][key][method]
            assert s["n"] == 3 and s["q1"] <= value == s["median"] <= s["q3"]
    assert r["spread"]["cached_kd_epoch_ratio"]["median"] == r["cached_kd_epoch_ratio"]
    for who in ("student", "teacher"):
        inf = r["inference"][who]
        assert inf["latency_batch1"]["memory_format"] in ("channels_last", "contiguous")
        assert 0 < inf["floor_ms_batch1"] < inf["latency_ms_batch1"] == inf["latency_batch1"]["median"]
    # measured in every round, not in one burst: the knobs' calls per round times three rounds
    student_calls, teacher_calls = SETTINGS["shapes"]["cpu"]["latency"]
    assert r["inference"]["student"]["latency_batch1"]["n"] == 3 * student_calls
    assert r["inference"]["teacher"]["latency_batch1"]["n"] == 3 * teacher_calls
    assert r["inference"]["student"]["batch_ms"]["n"] == 3
    assert r["matmul_gflops_per_s"] > 1

    def spreads(tree):
        if isinstance(tree, dict):
            if "coverage" in tree:
                yield tree
            for value in tree.values():
                yield from spreads(value)

    # three rounds: every interval is the whole range, at 1 - 2/8 coverage, in seconds or ms alike
    found = list(spreads(r))
    assert len(found) > 20 and all(0 <= s["coverage"] <= 1 for s in found)
    assert (
        r["train_step_ms"]["none"]["coverage"] == 0.75 and r["spread"]["kd_overhead_ratio"]["cwd"]["coverage"] == 0.75
    )


def test_the_median_interval_is_the_sign_test_interval_of_the_tables():
    from kdlib.bench import median_interval

    # Ranks of the 95 % interval for the median from the binomial tables (n = 10: x(2)..x(9);
    # n = 20: x(6)..x(15); n = 30: x(10)..x(21)); coverage 1 - 2 P(B <= j - 1) summed by hand.
    assert median_interval(list(range(1, 11))) == {"lo": 2, "hi": 9, "coverage": 1 - 2 * (1 + 10) / 1024}
    assert (median_interval(list(range(1, 21)))["lo"], median_interval(list(range(1, 21)))["hi"]) == (6, 15)
    assert (median_interval(list(range(1, 31)))["lo"], median_interval(list(range(1, 31)))["hi"]) == (10, 21)
    # Five values cannot reach 95 %: the whole range, and the 1 - 2/32 it does reach.
    assert median_interval([5.0, 1.0, 4.0, 2.0, 3.0]) == {"lo": 1.0, "hi": 5.0, "coverage": 1 - 2 / 32}


def test_the_median_interval_covers_a_skewed_median_as_often_as_it_says():
    import numpy as np

    from kdlib.bench import median_interval

    rng = np.random.default_rng(0)
    true_median = np.log(2)  # of Exp(1): skewed like a timing with slow spells
    trials = [median_interval(list(rng.exponential(size=9))) for _ in range(4000)]
    covered = np.mean([t["lo"] <= true_median <= t["hi"] for t in trials])
    assert trials[0]["coverage"] == 1 - 2 * (1 + 9) / 512
    assert abs(covered - trials[0]["coverage"]) < 0.015  # 3.5 binomial standard errors


def test_a_ratio_reads_as_no_cost_noise_or_its_value_with_its_interval():
    from kdlib.bench import verdict

    def s(lo, median, hi):
        return {"lo": lo, "median": median, "hi": hi}

    assert verdict("kd_overhead_ratio", s(0.98, 1.02, 1.06)) == "no measurable cost: 1.02 [0.98-1.06]"
    assert verdict("kd_overhead_ratio", s(1.12, 1.17, 1.21)) == "1.17 [1.12-1.21]"
    assert verdict("kd_overhead_ratio", s(0.90, 0.95, 0.97)) == "noise: 0.95 [0.90-0.97], cannot be below 1"
    assert verdict("input_pipeline_ratio", s(0.91, 0.93, 0.95)) == "0.93 [0.91-0.95]"
    assert verdict("input_pipeline_ratio", s(1.02, 1.07, 1.10)) == "noise: 1.07 [1.02-1.10], cannot be above 1"
    assert verdict("cached_kd_epoch_ratio", s(1.20, 1.26, 1.30)) == "1.26 [1.20-1.30]"
    # four rounds reach 1 - 2/16 = 87.5 %, not the 95 % the table's header states: the cell says so
    short = s(1.12, 1.17, 1.21) | {"coverage": 0.875}
    assert verdict("kd_overhead_ratio", short) == "1.17 [1.12-1.21] (88% interval)"


def test_steadiness_flags_a_spell_of_load_and_a_constant_one():
    from kdlib.bench import steadiness

    idle = steadiness([(0.050, 1.0)] * 12)
    assert idle["steady"] and idle["warning"] is None and idle["variation"] == 0
    # a third of the probes shared the cores: their share falls, the lower quartile with it
    spell = steadiness([(0.050, 1.0)] * 8 + [(0.070, 0.6)] * 4)
    assert not spell["steady"] and "cores its threads asked for" in spell["warning"] and spell["cpu_share"] == 0.6
    # half the probes twice as slow: IQR 50 ms over a median of 75 ms
    wobble = steadiness([(0.050, 1.0)] * 6 + [(0.100, 1.0)] * 6)
    assert not wobble["steady"] and abs(wobble["variation"] - 50 / 75) < 1e-9 and "varied by 67%" in wobble["warning"]


def test_a_round_leaves_the_networks_as_training_needs_them(tiny_shapes, tiny_teacher):
    """Latency runs each network in eval mode in its faster memory format; a round must hand the
    training steps after it a student in training mode and every network in channels_last,
    whichever format latency chose."""
    import torch

    from kdlib.bench import SettingBench

    bench = SettingBench(
        "shapes", dataset="shapes", data_root=str(tiny_shapes), batch_size=4, device="cpu", workers=0,
        teacher_weights=str(tiny_teacher), repeats=1, steps=1, log=lambda *a: None,
    )  # fmt: skip
    bench.formats = {"student": "contiguous", "teacher": "contiguous"}  # the path channels_last usually hides
    seen = []
    step = bench._in_memory
    bench._in_memory = lambda method: seen.append(bench.student.training) or step(method)
    bench.round()
    assert seen and all(seen) and bench.student.training and not bench.teacher.model.training
    for module in (bench.student, bench.teacher.model):
        weights = [p for p in module.parameters() if p.dim() == 4]
        assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    # the probe's samples of the round, on its clock
    times = [t for t, _, _ in bench.samples]
    assert len(times) >= 4 and times == sorted(times) and times[0] >= 0


def test_the_probe_sees_a_second_cpu_heavy_process():
    import os
    import subprocess
    import sys

    import torch

    from kdlib.bench import SteadinessProbe, steadiness

    probe = SteadinessProbe(torch.device("cpu"))
    # at least as many busy loops as there are cores or torch threads: the probe's threads then
    # get at most half of what they ask for, whatever the machine
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(max(os.cpu_count() or 1, torch.get_num_threads()))
    ]
    try:
        loaded = steadiness([probe() for _ in range(12)])
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert not loaded["steady"] and "CPU" in loaded["warning"], loaded


def test_two_bench_reports_compare_median_by_median(tmp_path, capsys):
    from kdlib.bench import compare, format_comparison

    def fig(lo, median, hi):
        return {"lo": lo, "median": median, "hi": hi, "n": 5}

    a = {"settings": {"s": {"x": fig(0.9, 1.00, 1.1), "y": fig(1.9, 2.0, 2.1), "steadiness": {"p": fig(1, 2, 3)}}}}
    b = {"settings": {"s": {"x": fig(0.95, 1.03, 1.2), "y": fig(2.15, 2.2, 2.3), "steadiness": {"p": fig(1, 9, 9)}}}}
    rows = {r["figure"]: r for r in compare(a, b)}
    assert set(rows) == {"settings.s.x", "settings.s.y"}  # the probe is not a figure
    assert abs(rows["settings.s.x"]["apart"] - 0.03) < 1e-12 and rows["settings.s.x"]["agree"]
    assert rows["settings.s.x"]["a_holds_b"] and rows["settings.s.x"]["b_holds_a"]
    y = rows["settings.s.y"]
    assert abs(y["apart"] - 0.1) < 1e-12 and not y["agree"] and not y["a_holds_b"] and not y["b_holds_a"]
    text = format_comparison(compare(a, b))
    assert text.startswith("1 of 2 medians within 5%") and "settings.s.y: 2 vs 2.2 (10.0% apart" in text
    assert "by kind: absolute 1 of 2\n" in text
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert main(["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    assert capsys.readouterr().out.strip() == text
    # a derived end-to-end rate (computed from other figures) is not compared as if measured
    rate = {"feature": fig(1.0, 2.0, 3.0), "none": fig(1.0, 2.0, 3.0)}
    a["settings"]["s"] |= {"spread": {"end_to_end_images_per_s": rate}, "end_to_end_derived": ["feature"]}
    b["settings"]["s"] |= {"spread": {"end_to_end_images_per_s": rate}}
    assert {r["figure"] for r in compare(a, b)} == {
        "settings.s.x", "settings.s.y", "settings.s.spread.end_to_end_images_per_s.none"
    }  # fmt: skip


def test_the_settings_rounds_are_spread_over_the_whole_run():
    from kdlib.bench import interleave

    # by hand: a's rounds at 1/4 and 3/4 of the run, b's at 1/8, 3/8, 5/8 and 7/8
    assert interleave({"a": 2, "b": 4}) == ["b", "a", "b", "b", "a", "b"]
    assert interleave({"report": 8, "shapes": 12}).count("report") == 8
    order = interleave({"report": 8, "shapes": 12})
    # neither setting runs more than two rounds in a row, and each starts in the run's first quarter
    assert "report" in order[:5] and "shapes" in order[:5]
    assert all(order[i : i + 3] != [order[i]] * 3 for i in range(len(order) - 2))
