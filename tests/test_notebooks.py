"""House rules of the notebooks, the demo runner's parameter check, and the committed figures."""

import ast
import json
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from kdlib.demo import NOTEBOOKS, UnknownParameterError, check_parameters, notebook_paths

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = ["00_data", "01_architecture", "02_train_none", "03_train_feature", "04_train_response",
            "05_train_both", "06_failure_analysis", "07_results"]  # fmt: skip
PARAMETERS = {"dataset", "data_root", "image_size", "epochs", "seeds", "device", "profile", "runs_dir",
              "figures_dir", "report_dir"}  # fmt: skip


def test_numbered_chapters_exist():
    assert [p.stem for p in notebook_paths()] == EXPECTED


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_house_rules(path):
    nb = nbformat.read(str(path), as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] <= 3, "one parameters cell near the top"
    tree = ast.parse(nb.cells[tagged[0]].source)
    for node in tree.body:  # literal assignments only
        assert isinstance(node, ast.Assign), ast.dump(node)
        ast.literal_eval(node.value)
    assert {t.id for node in tree.body for t in node.targets} == PARAMETERS
    assert nb.cells[0].cell_type == "markdown"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(ast.parse(cell.source))), \
                "logic belongs in kdlib, not in a notebook"
            assert "papermill" not in cell.metadata and "execution" not in cell.metadata
    assert "papermill" not in nb.metadata
    assert '"duration"' not in path.read_text()


def test_unknown_notebook_parameter_is_refused():
    nb = NOTEBOOKS / "02_train_none.ipynb"
    assert check_parameters(nb, {"profile": "demo"}) == {"profile": "demo"}
    with pytest.raises(UnknownParameterError, match="epoch"):
        check_parameters(nb, {"epoch": 3})  # a typo of `epochs`


# The committed figures come from `make demo`; each must be a PNG of the size its function sets.
FIGURES = {
    "architecture.png": (1200, 420),
    "data_augmentation.png": (1280, 730),
    "loss_none.png": (960, 300),
    "loss_feature.png": (1280, 300),
    "loss_response.png": (1280, 300),
    "loss_both.png": (1600, 300),
    "qualitative_none.png": (1190, 800),
    "qualitative_feature.png": (1190, 800),
    "qualitative_response.png": (1190, 800),
    "qualitative_both.png": (1190, 800),
    "failure_buckets.png": (1260, 320),
    "per_class_iou.png": (870, 792),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_committed_figures_are_images_of_the_expected_size(name):
    path = ROOT / "figures" / name
    assert path.is_file() and path.stat().st_size > 5000, f"{path} missing or empty: run `make demo`"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == FIGURES[name]
        assert image.convert("L").getextrema()[0] < 200  # not a blank canvas


def test_committed_report_reads_its_numbers_from_runs():
    report = (ROOT / "report" / "report.md").read_text()
    metrics = sorted((ROOT / "report" / "runs").glob("*/seed*/metrics.json"))
    assert {p.parent.parent.name for p in metrics} == {"none", "feature", "response", "both"}
    assert len(metrics) >= 4 * 5  # at least five seeds per method
    for path in metrics:
        m = json.loads(path.read_text())
        method = "response" if path.parent.parent.name == "response_cached" else path.parent.parent.name
        assert m["method"] == method and 0 <= m["best_miou"] <= 1
    # every row of the results table is the mean and std of its runs' metrics.json
    import statistics

    from kdlib.report import METHOD_NAMES

    for name in {p.parent.parent.name for p in metrics}:
        values = [json.loads(p.read_text())["best_miou"] for p in metrics if p.parent.parent.name == name]
        row = f"| {METHOD_NAMES[name]} | {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} | {len(values)} |"
        assert row in report, row
        for p in metrics:  # the history beside each metrics.json holds the same best epoch
            if p.parent.parent.name == name:
                history = (p.parent / "history.csv").read_text().splitlines()
                assert len(history) - 1 >= json.loads(p.read_text())["best_epoch"]
    html = (ROOT / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    assert "Evaluation protocol" in report and "Teacher" in report


@pytest.mark.slow
def test_training_and_results_notebooks_run_on_voc_with_the_fcn_resnet50_teacher(tmp_path, monkeypatch):
    """The VOC path of the notebooks, end to end: a VOC-layout fixture, a stand-in for
    torchvision's FCN-ResNet50 checkpoint (random weights; the real file cannot be fetched
    here), the smoke profile."""
    import torch
    from test_data import write_voc

    from kdlib.demo import run_notebook
    from kdlib.models import build_model

    write_voc(tmp_path / "voc")
    weights = tmp_path / "fcn_resnet50_coco-1167a1af.pth"
    torch.manual_seed(0)
    torch.save(build_model("fcn_resnet50").state_dict(), weights)
    monkeypatch.setenv("KDLIB_TEACHER_WEIGHTS", str(weights))
    params = {"dataset": "voc", "data_root": str(tmp_path / "voc"), "image_size": 64, "profile": "smoke",
              "runs_dir": str(tmp_path / "runs"), "figures_dir": str(tmp_path / "figures"),
              "report_dir": str(tmp_path / "report")}  # fmt: skip
    for name in ("02_train_none.ipynb", "04_train_response.ipynb", "07_results.ipynb"):
        run_notebook(NOTEBOOKS / name, params, tmp_path / "executed", timeout=600)
    config = json.loads((tmp_path / "runs" / "response" / "seed0" / "config.json").read_text())
    assert config["dataset"] == "voc" and config["teacher"] == "fcn_resnet50" and config["image_size"] == 64
    teacher = json.loads((tmp_path / "report" / "teacher_eval.json").read_text())
    assert teacher["model"] == "fcn_resnet50" and len(teacher["per_class_iou"]) == 21
    assert "Teacher (fcn_resnet50" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "figures" / "loss_response.png").is_file()


def test_make_report_refuses_to_train(tmp_path, capsys):
    from kdlib.demo import run_report

    assert run_report("shapes", str(tmp_path / "data"), "cpu", "smoke", runs_dir=tmp_path / "runs") == 1
    err = capsys.readouterr().err
    assert "Run `make demo`" in err and str(tmp_path / "runs" / "none" / "seed0") in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_smoke_copies_keep_the_committed_outputs_and_set_the_smoke_profile(tmp_path):
    from kdlib.demo import write_smoke_copies

    copies = write_smoke_copies(tmp_path)
    assert [p.name for p in copies] == [p.name for p in notebook_paths()]
    for copy, source in zip(copies, notebook_paths()):
        nb, src = nbformat.read(str(copy), as_version=4), nbformat.read(str(source), as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        values = {t.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body for t in n.targets}
        assert values["profile"] == "smoke" and values["runs_dir"] == str(tmp_path.resolve() / "runs")
        assert set(values) == PARAMETERS
        assert [c.get("outputs") for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])] \
            == [c.get("outputs") for c in src.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]


def test_committed_notebooks_declare_the_demo_configuration():
    from kdlib.demo import COMMITTED, ROOT, is_committed_configuration

    for path in notebook_paths():
        nb = nbformat.read(str(path), as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        values = {t.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body for t in n.targets}
        assert (values["profile"], values["dataset"], values["device"]) == ("demo", "shapes", "cpu")
        assert (path.parent / values["data_root"]).resolve() == COMMITTED["data_root"].resolve()
        assert (path.parent / values["runs_dir"]).resolve() == (ROOT / "runs" / "demo-shapes").resolve()
    assert is_committed_configuration("shapes", "data/shapes", "cpu", "demo")
    assert not is_committed_configuration("shapes", "data/shapes", "cpu", "full")
    assert not is_committed_configuration("voc", "data/shapes", "cpu", "demo")
