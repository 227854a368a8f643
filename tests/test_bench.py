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
    methods = {"none", "response", "feature", "both", "response_cached"}
    assert set(r["train_images_per_s"]) == methods
    assert all(v["compute_only"] > 0 and v["end_to_end"] > 0 for v in r["train_images_per_s"].values())
    assert set(report["kd_overhead_ratio"]["shapes"]) == {"response", "feature", "both"}
    assert all(0.3 < v < 3 for v in report["kd_overhead_ratio"]["shapes"].values())
    assert set(report["input_pipeline_ratio"]["shapes"]) == methods
    assert 0.2 < report["cached_kd_epoch_ratio"]["shapes"] < 5
    assert r["cache"]["bytes_per_image"] == 21 * 16 * 16 * 2
    assert set(report["targets"]) == set(TARGETS) and report["machine"]["torch"]
    printed = capsys.readouterr().out
    assert format_table(report) in printed and "cached response-KD epoch" in printed
