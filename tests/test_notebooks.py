"""House rules of the notebooks, the demo runner's parameter check, and the committed figures."""

import ast
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from kdlib.chapter import UnknownParameterError
from kdlib.notebooks import INJECTED_TAG, NOTEBOOKS, check_parameters, notebook_paths

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = [
    "00_data",
    "01_architecture",
    "02_train_none",
    "03_train_feature",
    "04_train_response",
    "05_train_both",
    "06_failure_analysis",
    "07_results",
    "08_beyond_the_report",
    "09_sweep",
]
# the parameters a chapter declares beyond the common ones: its switches for `make methods` / `make sweep`
OWN_PARAMETERS = {
    "08_beyond_the_report": {"train_extra"},
    "09_sweep": {"run_sweep", "sweep_methods", "sweep_temperatures", "sweep_betas", "sweep_seeds"},
}
PARAMETERS = {
    "dataset",
    "data_root",
    "image_size",
    "epochs",
    "seeds",
    "device",
    "profile",
    "runs_dir",
    "figures_dir",
    "report_dir",
}


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
    assert {t.id for node in tree.body for t in node.targets} == PARAMETERS | OWN_PARAMETERS.get(path.stem, set())
    assert nb.cells[0].cell_type == "markdown"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(ast.parse(cell.source))), (
                "logic belongs in kdlib, not in a notebook"
            )
            assert "papermill" not in cell.metadata and "execution" not in cell.metadata
    for cell in nb.cells:  # nbval's markers are tags, and code fits JupyterLab's and the HTML's width
        if cell.cell_type == "code":
            assert "NBVAL_" not in cell.source, "an nbval marker belongs in the cell's tags (nbval-check-output)"
            too_long = [line for line in cell.source.splitlines() if len(line) > 100]
            assert not too_long, too_long
    assert "papermill" not in nb.metadata
    assert '"duration"' not in path.read_text()
    # papermill's cell of a `make methods` / `make sweep` run would switch on hours of training in
    # a later `make demo` (papermill keeps it when given no parameters) and in "Run All"
    assert not any(INJECTED_TAG in c.metadata.get("tags", []) for c in nb.cells)


def test_nbval_checks_the_outputs_that_do_not_depend_on_the_profile():
    """Every chapter that shows a deterministic output (shapes, counts, a loss on fixed tensors)
    has it checked by nbval: its cell carries the nbval-check-output tag."""
    import nbformat

    checked = {
        path.name: sum("nbval-check-output" in c.metadata.get("tags", []) for c in nbformat.read(path, 4).cells)
        for path in notebook_paths()
    }
    assert sum(checked.values()) >= 15, checked
    for name in ("00_data.ipynb", "01_architecture.ipynb", "03_train_feature.ipynb", "04_train_response.ipynb"):
        assert checked[name] >= 1, name


def test_unknown_notebook_parameter_is_refused():
    nb = NOTEBOOKS / "02_train_none.ipynb"
    assert check_parameters(nb, {"profile": "demo"}) == {"profile": "demo"}
    with pytest.raises(UnknownParameterError, match="epoch"):
        check_parameters(nb, {"epoch": 3})  # a typo of `epochs`


# The committed figures come from `make demo`; each must be a PNG of the size its function sets.
FIGURES = {  # figsize x dpi 100 of each figure's function
    "architecture.png": (1200, 560),
    "data_augmentation.png": (1280, 730),
    "loss_none.png": (960, 320),  # 3.2 in per panel: total, cross entropy, mIoU
    "loss_feature.png": (1280, 320),
    "loss_response.png": (1280, 320),
    "loss_both.png": (1600, 320),
    "qualitative_none.png": (1190, 800),
    "qualitative_feature.png": (1190, 800),
    "qualitative_response.png": (1190, 800),
    "qualitative_both.png": (1190, 800),
    "failure_buckets.png": (1260, 320),
    "feature_position_maps.png": (1300, 1540),  # 6 rows (2 teachers, 4 student maps) x (image + 4 levels), 2.6 x 2.5 in
}
# the per-class map: a row for the teacher and each committed run name, 1.1 in each + 4.2; 21 classes, 0.32 in + 2.2
ROWS = 1 + len({p.parent.parent.name for p in (ROOT / "report" / "runs").glob("*/seed*/metrics.json")})
FIGURES["per_class_iou.png"] = (round(100 * (1.1 * ROWS + 4.2)), 892)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_committed_figures_are_images_of_the_expected_size(name):
    path = ROOT / "figures" / name
    assert path.is_file() and path.stat().st_size > 5000, f"{path} missing or empty: run `make demo`"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == FIGURES[name]
        assert image.convert("L").getextrema()[0] < 200  # not a blank canvas


def test_committed_report_reads_its_numbers_from_runs():
    from kdlib.methods import method_of

    report = (ROOT / "report" / "report.md").read_text()
    metrics = sorted((ROOT / "report" / "runs").glob("*/seed*/metrics.json"))
    names = {p.parent.parent.name for p in metrics}
    assert names >= {"none", "feature", "response", "both", "response_t2", "pairwise", "cwd", "dist"}
    assert any(n.endswith("_unlabeled") for n in names)  # `make methods`' rows are committed too
    assert len(metrics) >= len(names) * 5  # at least five seeds per row
    for path in metrics:
        m = json.loads(path.read_text())
        name = path.parent.parent.name
        assert m["method"] == method_of(name).name and 0 <= m["best_miou"] <= 1
    # every row of the results table is the mean and std of its runs' metrics.json
    import statistics

    from kdlib.methods import display_name, is_extra

    for name in {p.parent.parent.name for p in metrics}:
        values = [json.loads(p.read_text())["best_miou"] for p in metrics if p.parent.parent.name == name]
        row = next(line for line in report.splitlines() if line.startswith(f"| {display_name(name)} | make "))
        assert f"| {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} | {len(values)} |" in row, row
        assert ("make methods" in row) == is_extra(name), row
        for p in metrics:  # the history beside each metrics.json holds the same best epoch
            if p.parent.parent.name == name:
                history = (p.parent / "history.csv").read_text().splitlines()
                assert len(history) - 1 >= json.loads(p.read_text())["best_epoch"]
    html = (ROOT / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    assert "## Findings" in report and "## Open questions" in report and "Teacher" in report


@pytest.mark.slow
def test_training_and_results_notebooks_run_on_voc_with_the_fcn_resnet50_teacher(tmp_path, monkeypatch):
    """The VOC path of the notebooks, end to end: a VOC-layout fixture, a stand-in for
    torchvision's FCN-ResNet50 checkpoint (random weights; the real file cannot be fetched
    here), the smoke profile."""
    import torch
    from test_data import write_voc

    from kdlib.models import build_model
    from kdlib.notebooks import run_notebook

    write_voc(tmp_path / "voc")
    weights = tmp_path / "fcn_resnet50_coco-1167a1af.pth"
    torch.manual_seed(0)
    torch.save(build_model("fcn_resnet50").state_dict(), weights)
    monkeypatch.setenv("KDLIB_TEACHER_WEIGHTS", str(weights))
    params = {
        "dataset": "voc",
        "data_root": str(tmp_path / "voc"),
        "image_size": 64,
        "profile": "smoke",
        "runs_dir": str(tmp_path / "runs"),
        "figures_dir": str(tmp_path / "figures"),
        "report_dir": str(tmp_path / "report"),
    }
    for name in ("02_train_none.ipynb", "04_train_response.ipynb", "07_results.ipynb"):
        run_notebook(NOTEBOOKS / name, params, tmp_path / "executed", timeout=600)
    config = json.loads((tmp_path / "runs" / "response" / "seed0" / "config.json").read_text())
    assert config["dataset"] == "voc" and config["teacher"] == "fcn_resnet50" and config["image_size"] == 64
    teacher = json.loads((tmp_path / "report" / "teacher_eval.json").read_text())
    assert teacher["model"] == "fcn_resnet50" and len(teacher["per_class_iou"]) == 21
    assert "Teacher (fcn_resnet50" in (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "figures" / "loss_response.png").is_file()


def test_make_report_refuses_to_train(tmp_path, capsys):
    from kdlib.notebooks import run_report

    assert run_report("shapes", str(tmp_path / "data"), "cpu", "smoke", runs_dir=tmp_path / "runs") == 1
    err = capsys.readouterr().err
    assert "Run `make demo`" in err and str(tmp_path / "runs" / "none" / "seed0") in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_smoke_copies_keep_the_committed_outputs_and_set_the_smoke_profile(tmp_path):
    from kdlib.notebooks import write_smoke_copies

    copies = write_smoke_copies(tmp_path)
    assert [p.name for p in copies] == [p.name for p in notebook_paths()]
    for copy, source in zip(copies, notebook_paths()):
        nb, src = nbformat.read(str(copy), as_version=4), nbformat.read(str(source), as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        values = {t.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body for t in n.targets}
        assert values["profile"] == "smoke" and values["runs_dir"] == str(tmp_path.resolve() / "runs")
        assert set(values) == PARAMETERS | OWN_PARAMETERS.get(source.stem, set())
        assert [
            c.get("outputs")
            for c in nb.cells
            if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])
        ] == [
            c.get("outputs")
            for c in src.cells
            if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])
        ]


def test_committed_notebooks_declare_the_demo_configuration():
    from kdlib.notebooks import COMMITTED, ROOT, is_committed_configuration

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


def test_a_parameter_injected_but_not_declared_is_refused_inside_the_kernel():
    from kdlib.chapter import check_injected_parameters

    declared = 'dataset = "shapes"\nepochs = None\n'
    check_injected_parameters(["", declared, "# Parameters\nepochs = 3\n", "x = 1"])  # declared: fine
    check_injected_parameters(["", declared, "epoch = 3"])  # nothing injected by papermill: not its business
    with pytest.raises(
        UnknownParameterError, match="no parameter.s. epoch; its parameters cell declares dataset, epochs"
    ):
        check_injected_parameters(["", declared, "# Parameters\nepoch = 3\nepochs = 2\n"])


@pytest.mark.slow
def test_papermill_used_directly_stops_at_an_undeclared_parameter(tmp_path):
    """`papermill notebooks/03_train_feature.ipynb out.ipynb -p epoch 50`: papermill only warns
    about `epoch`; the notebook's first cell after the parameters stops the run."""
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as caught:
        pm.execute_notebook(
            str(NOTEBOOKS / "03_train_feature.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"epoch": 50},
            kernel_name="python3",
            cwd=str(tmp_path),
            progress_bar=False,
        )
    error = caught.value
    assert error.ename == "UnknownParameterError" and "epoch" in error.evalue and "epochs" in error.evalue
    assert error.exec_count == 3  # parameters, papermill's injected cell, then the check: nothing else ran
    assert list(tmp_path.iterdir()) == [tmp_path / "out.ipynb"]  # no data generated, no run started


def test_make_demo_stops_before_the_first_notebook_on_missing_data(tmp_path, capsys):
    from kdlib.notebooks import run_demo

    assert run_demo("voc", str(tmp_path / "no-voc-here"), "cpu", "smoke") == 2
    out, err = capsys.readouterr()
    assert "[1/" not in out  # no notebook started
    assert "cannot be used" in err and "no-voc-here" in err and "JPEGImages" in err  # the data set's own layout help
    assert "Traceback" not in err and len(err.splitlines()) < 25


@pytest.mark.slow
def test_make_demo_reports_a_failing_cell_in_a_few_lines(tmp_path, monkeypatch, capfd):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    from kdlib import notebooks

    folder = tmp_path / "notebooks"
    folder.mkdir()
    params = new_code_cell(
        'dataset = "shapes"\ndata_root = "x"\ndevice = "cpu"\nprofile = "demo"\nruns_dir = "r"\n'
        'figures_dir = "f"\nreport_dir = "p"'
    )
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(
        cells=[new_markdown_cell("# a chapter"), params, new_code_cell("# why\nvalue = 1 / 0")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, str(folder / "00_broken.ipynb"))
    monkeypatch.setattr(notebooks, "NOTEBOOKS", folder)
    monkeypatch.setattr(notebooks, "ROOT", tmp_path)
    assert notebooks.run_demo("shapes", str(tmp_path / "data"), "cpu", "smoke") == 1
    out, err = capfd.readouterr()
    executed = tmp_path / "runs" / "smoke-shapes" / "notebooks" / "00_broken.ipynb"
    # a kernel slow to shut down on a loaded machine is interrupted and says so in its own log line,
    # or its libzmq asserts on the closing socket: the kernel process's stderr, not make demo's
    kernel_noise = (
        "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.",
        "Assertion failed: pfd.revents & POLLIN",
    )
    lines = [line for line in err.splitlines() if not line.startswith(kernel_noise)]
    assert lines == [
        "make demo: 00_broken.ipynb stopped in cell 3 ('value = 1 / 0'):",
        "  ZeroDivisionError: division by zero",
        f"the executed notebook, with the full traceback: {executed}",
    ]  # and nothing else: no papermill traceback, no kernel transport warning
    assert executed.is_file()


def test_a_notebook_runs_with_its_own_defaults_whatever_an_earlier_run_injected(tmp_path):
    """A notebook written back by `make sweep` held papermill's cell (`run_sweep = True`); with
    no parameters papermill leaves such a cell in place, so every later run would have trained."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    from kdlib import notebooks

    params = new_code_cell("switch = False")
    params.metadata["tags"] = ["parameters"]
    stale = new_code_cell("# Parameters\nswitch = True\n")
    stale.metadata["tags"] = ["injected-parameters"]
    nb = new_notebook(
        cells=[new_markdown_cell("# a chapter"), params, stale, new_code_cell("print(f'switch={switch}')")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    path = tmp_path / "00_chapter.ipynb"
    nbformat.write(nb, str(path))

    def printed(executed):
        return "".join(o.get("text", "") for o in nbformat.read(str(executed), as_version=4).cells[-1].outputs)

    assert printed(notebooks.run_notebook(path, {}, tmp_path / "a", 60)) == "switch=False\n"
    executed = notebooks.run_notebook(path, {"switch": True}, tmp_path / "b", 60)
    assert printed(executed) == "switch=True\n"
    notebooks.clean_for_commit(executed)  # what `make sweep` writes back keeps its outputs, not the switch
    cleaned = nbformat.read(str(executed), as_version=4)
    assert [c.source for c in cleaned.cells] == [c.source for c in nb.cells if c is not stale]
    assert printed(executed) == "switch=True\n"


@pytest.mark.slow
def test_make_lab_serves_the_notebooks_with_the_projects_kernel():
    """`make lab`, headless: JupyterLab answers on loopback, lists the chapters, and its
    "python3" kernel is the project's .venv interpreter."""
    import os
    import secrets
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(8)
    args = f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token} --ServerApp.open_browser=False"
    lab = subprocess.Popen(
        ["make", "-s", "lab", f"LAB_ARGS={args}"],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def get(path):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                specs = get("/api/kernelspecs")
                break
            except OSError:
                assert lab.poll() is None, f"make lab exited: {lab.stderr.read()[-2000:]}"
                assert time.monotonic() < deadline, "JupyterLab did not answer within 90 s"
                time.sleep(0.5)
        kernel = specs["kernelspecs"]["python3"]["spec"]
        assert Path(kernel["argv"][0]).is_relative_to(ROOT / ".venv"), kernel["argv"]
        listed = {item["name"] for item in get("/api/contents")["content"]}
        assert {f"{name}.ipynb" for name in EXPECTED} <= listed
    finally:
        if lab.poll() is None:
            os.killpg(lab.pid, signal.SIGTERM)
        lab.wait(timeout=30)


def _images(html: str) -> list[str]:
    from html.parser import HTMLParser

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.sources = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs).get("src", ""))

    parser = Images()
    parser.feed(html)
    return parser.sources


def test_the_html_report_shows_every_figure_of_the_markdown_report():
    """What a browser would load: every <img> of report.html is an inlined PNG that decodes,
    one per figure that report.md shows."""
    import base64
    import io
    import re

    report = ROOT / "report"
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (report / "report.md").read_text())
    sources = _images((report / "report.html").read_text())
    assert figures and len(sources) == len(figures)
    for src, figure in zip(sources, figures):
        assert src.startswith("data:image/png;base64,"), f"{figure}: not inlined ({src[:60]})"
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            image.verify()
        assert base64.b64decode(src.split(",", 1)[1]) == (report / figure).resolve().read_bytes()


def test_the_html_report_refuses_a_missing_image(tmp_path):
    from kdlib.report import to_html

    (tmp_path / "there.png").write_bytes((ROOT / "figures" / "architecture.png").read_bytes())
    assert len(_images(to_html("![a](there.png)", tmp_path))) == 1
    with pytest.raises(FileNotFoundError, match="missing.png"):
        to_html("![a](there.png)\n\n![b](missing.png)", tmp_path)


def test_make_methods_and_make_sweep_train_in_kdlib_then_show_their_chapters(tmp_path, monkeypatch):
    """`python -m kdlib methods` / `sweep` train their rows by kdlib's one function for them
    (the rule of which rows train lives there), then run chapters 3 and 8, or 9, and chapter 7 with no
    switch injected: the chapters only show. The Makefile's targets are these commands."""
    from kdlib import cli, experiment, notebooks, sweep

    calls, trained = [], []
    monkeypatch.setattr(
        notebooks,
        "run_notebook",
        lambda nb, params, out, timeout: calls.append((nb.name, params, timeout)) or out / nb.name,
    )
    monkeypatch.setattr(notebooks, "clean_for_commit", lambda path: None)
    monkeypatch.setattr(notebooks.shutil, "copyfile", lambda a, b: None)
    monkeypatch.setattr(notebooks, "check_data", lambda *a: None)
    monkeypatch.setattr(experiment, "train_extra_rows", lambda **kw: trained.append(("methods", kw)))
    monkeypatch.setattr(sweep, "sweep_table", lambda swept=None, **kw: trained.append(("sweep", kw)))
    argv = ["--data-root", str(tmp_path / "shapes"), "--profile", "smoke"]
    assert cli.main(["methods", *argv]) == 0
    # chapter 3 too: it measures the student-side feature KD that make methods trains
    assert [name for name, _, _ in calls] == [
        "03_train_feature.ipynb",
        "08_beyond_the_report.ipynb",
        "07_results.ipynb",
    ]
    assert trained[0][0] == "methods" and trained[0][1]["profile"] == "smoke"
    assert trained[0][1]["committed_dir"] == notebooks.ROOT / "report" / "runs"
    assert all("train_extra" not in params and "run_sweep" not in params for _, params, _ in calls)
    calls.clear()
    assert cli.main(["sweep", *argv]) == 0
    assert [name for name, _, _ in calls] == ["09_sweep.ipynb", "07_results.ipynb"]
    assert trained[1][0] == "sweep" and str(trained[1][1]["table_path"]).endswith("report/tables/sweep.csv")
    makefile = (ROOT / "Makefile").read_text()
    assert "$(PY) -m kdlib methods $(DEMO_ARGS)" in makefile and "$(PY) -m kdlib sweep $(DEMO_ARGS)" in makefile
    assert "--set" not in makefile


def test_make_report_builds_every_figure_and_table_without_a_notebook(tmp_path, monkeypatch, capsys):
    """`make report` rebuilds the figures, the tables and the report from finished runs with
    kdlib's own functions: no notebook runs (papermill would fail here) and nothing trains."""
    from kdlib import experiment, notebooks, shapes

    data = shapes.generate(tmp_path / "shapes", teacher_train=4, train=16, val=12, size=64, progress=False)
    runs, figs, report = tmp_path / "runs", tmp_path / "figures", tmp_path / "report"
    experiment.train_demo_rows(dataset="shapes", data_root=str(data), runs_dir=runs, profile="smoke")

    def no_notebook(*args, **kwargs):
        raise AssertionError("make report ran a notebook")

    monkeypatch.setattr(notebooks, "run_notebook", no_notebook)
    monkeypatch.setattr(experiment, "fit", no_notebook)
    from kdlib import plots

    grid, column_titles = plots.qualitative_grid, []
    monkeypatch.setattr(plots, "qualitative_grid", lambda *a, **k: column_titles.append(list(a[1])) or grid(*a, **k))
    assert notebooks.run_report("shapes", str(data), "cpu", "smoke", runs, figs, report) == 0
    # the qualitative grids' columns carry the names the tables use, never run ids
    assert column_titles and all(
        t == ["ground truth", "teacher", "No KD", "Feature", "Response", "Feature & Response"] for t in column_titles
    ), column_titles
    made = {p.name for p in figs.glob("*.png")}
    assert made >= {"architecture.png", "data_augmentation.png", "per_class_iou.png", "failure_buckets.png"}
    assert "feature_position_maps.png" in made
    assert made >= {f"loss_{m}.png" for m in ("none", "feature", "response", "both")}
    assert made >= {f"qualitative_{m}.png" for m in ("none", "feature", "response", "both")}
    tables = {p.name for p in (report / "tables").glob("*.csv")}
    assert tables >= {
        "iou_by_size.csv",
        "confused_pairs.csv",
        "teacher_dependency.csv",
        "feature_position_similarity.csv",
    }
    text = (report / "report.md").read_text()
    assert "![" in text and (report / "report.html").is_file() and (report / "teacher_eval.json").is_file()
    assert "report rebuilt from the finished runs" in capsys.readouterr().out


def test_committed_section_6_is_what_the_committed_runs_give(tmp_path):
    """report.md's headline table and Section 6, rebuilt from report/runs alone (no local runs):
    each line rebuilt is in the committed report, so it was regenerated, not edited, and no
    reading has changed since without it (a line the code no longer writes is not caught)."""
    from kdlib import report

    committed = ROOT / "report" / "report.md"
    out = tmp_path / "report"
    out.mkdir()
    (out / "runs").symlink_to(ROOT / "report" / "runs")
    shutil.copyfile(ROOT / "report" / "teacher_eval.json", out / "teacher_eval.json")
    lines, overview, said, _ = report.conditions_sections(tmp_path / "no-runs", tmp_path / "figures", out)
    text = committed.read_text()
    rebuilt = [x for x in [*lines, *overview, *said] if x and not x.startswith(("![", "*Best val"))]
    assert len(rebuilt) > 15
    for line in rebuilt:
        assert line in text, f"{committed} is stale: `make report` rebuilds it ({line[:120]}...)"
