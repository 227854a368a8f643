"""python -m kdlib bench on a tiny benchmark: every number of issue #6 is there and sane."""

import json

from kdlib.bench import TARGETS, format_table
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
    methods = {"none", "response", "feature", "both", "pairwise", "cwd", "dist", "response_cached"}
    assert set(r["train_images_per_s"]) == methods
    assert all(v["compute_only"] > 0 and v["end_to_end"] > 0 for v in r["train_images_per_s"].values())
    assert set(report["kd_overhead_ratio"]["shapes"]) == {"response", "feature", "both", "pairwise", "cwd", "dist"}
    # sanity, not speed (make bench measures that): two rounds on a busy machine can double one step
    assert all(0.3 < v < 5 for v in report["kd_overhead_ratio"]["shapes"].values())
    assert set(report["input_pipeline_ratio"]["shapes"]) == methods
    assert 0.2 < report["cached_kd_epoch_ratio"]["shapes"] < 5
    assert r["cache"]["bytes_per_image"] == 21 * 16 * 16 * 2
    assert set(report["targets"]) == set(TARGETS) and report["machine"]["torch"]
    printed = capsys.readouterr().out
    assert format_table(report) in printed and "cached response-KD epoch" in printed


def test_every_bench_figure_carries_its_spread_and_latency_its_floor(tiny_shapes, tiny_teacher, tmp_path):
    from kdlib.bench import spread

    assert spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "q1": 1.75, "q3": 4.75, "n": 4}
    out = tmp_path / "bench.json"
    args = ["bench", "--setting", "shapes", "--data-root", str(tiny_shapes), "--batch-size", "4", "--repeats", "3"]
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
    assert r["matmul_gflops_per_s"] > 1
