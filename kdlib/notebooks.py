"""``make demo``: execute every numbered notebook in order with papermill.

The notebooks' own parameters are the committed configuration (the ``demo`` profile on the
embedded benchmark, on the CPU): ``make demo`` executes them as they are and writes them back
in place, so what a reader sees in ``notebooks/`` is the demo's real output (timing metadata
and papermill's injected cell stripped), and "Run All" in JupyterLab reruns the same thing,
reusing finished runs. Any other configuration (``DATASET=voc``, ``PROFILE=full``,
``DEVICE=cuda``) is injected as papermill parameters and its executed copies go under
``runs/<profile>-<dataset>/notebooks/``.

``make test`` checks the notebooks with nbval on copies whose parameters cell says ``smoke``
(:func:`write_smoke_copies`): the cells tagged ``nbval-check-output`` (outputs that do not
depend on the profile) must reproduce the committed outputs.

Each notebook runs with ``cwd`` set to its folder, the ``python3`` kernel and a per-cell
timeout. Parameters the notebook does not declare are refused (papermill itself only warns).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from .chapter import UnknownParameterError

ROOT = Path(__file__).resolve().parent.parent


NOTEBOOKS = ROOT / "notebooks"


INJECTED_TAG = "injected-parameters"  # papermill's tag on the cell of the parameters it was given


CELL_TIMEOUT_S = 3600  # a hung cell in `make demo`; `make methods` / `make sweep` train for longer and lift it


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def check_parameters(notebook: Path, parameters: dict) -> dict:
    """Keep the parameters ``notebook`` declares; refuse names no notebook could take."""
    import papermill as pm

    declared = pm.inspect_notebook(str(notebook))
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise UnknownParameterError(
            f"{notebook.name} has no parameter(s) {unknown}; its parameters cell declares {sorted(declared)}"
        )
    return parameters


def run_notebook(notebook: Path, parameters: dict, out_dir: Path, timeout: int | None = CELL_TIMEOUT_S) -> Path:
    """Execute ``notebook`` with ``parameters`` into ``out_dir``; papermill's
    ``PapermillExecutionError`` (and the executed notebook, traceback included) when a cell fails.
    ``timeout``: seconds a cell may run (None: no limit)."""
    import nbformat
    import papermill as pm
    from traitlets.config import Config as KernelConfig

    check_parameters(notebook, parameters)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / notebook.name
    # papermill replaces an earlier run's injected cell only when given parameters: without
    # this, the defaults would lose to whatever the notebook was last executed with
    nb = nbformat.read(str(notebook), as_version=4)
    nb.cells = _without_injected_parameters(nb.cells)
    nbformat.write(nb, str(output))
    # IPC rather than TCP between papermill and the local kernel: every kernel started over
    # TCP prints a warning about unencrypted transport
    kernel = KernelConfig({"KernelManager": {"transport": "ipc"}})
    pm.execute_notebook(
        str(output),
        str(output),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(notebook.parent),
        execution_timeout=timeout,
        progress_bar=False,
        log_output=False,
        report_mode=False,
        config=kernel,
    )
    return output


def check_data(dataset: str, data_root, profile: str = "demo") -> str | None:
    """Why the data under ``data_root`` cannot serve the notebooks (None when it can): the
    data set's own message, checked before the first notebook starts. The embedded benchmark
    is generated when absent, as the notebooks would."""
    from .config import resolve_image_size
    from .data import DataError, DatasetNotFoundError, build_dataset
    from .profiles import prepare_data

    try:
        root = prepare_data(dataset, str(data_root), profile)
        size = resolve_image_size(dataset, root)
        for split in ("train", "val"):
            build_dataset(dataset, root, split, train=False, image_size=size)
    except (DatasetNotFoundError, DataError, OSError, ValueError) as error:
        return str(error)
    return None


COMMITTED = {"dataset": "shapes", "data_root": ROOT / "data" / "shapes", "device": "cpu", "profile": "demo"}


def is_committed_configuration(dataset: str, data_root, device: str, profile: str) -> bool:
    """Whether these are the settings the committed notebooks declare (and show the outputs of)."""
    root = Path(data_root) if Path(data_root).is_absolute() else ROOT / data_root
    return (dataset, device, profile) == (
        COMMITTED["dataset"],
        COMMITTED["device"],
        COMMITTED["profile"],
    ) and root.resolve() == COMMITTED["data_root"].resolve()


def smoke_parameters(folder: Path) -> dict:
    """The smoke profile's settings, everything written under ``folder``."""
    folder = Path(folder).resolve()
    return {
        "dataset": "shapes",
        "data_root": str(folder / "data" / "shapes"),
        "image_size": None,
        "epochs": None,
        "seeds": None,
        "device": "cpu",
        "profile": "smoke",
        "runs_dir": str(folder / "runs"),
        "figures_dir": str(folder / "figures"),
        "report_dir": str(folder / "report"),
        # chapters 8 and 9 train their rows and a small map, so that every path runs
        "train_extra": True,
        "run_sweep": True,
        "sweep_methods": None,
        "sweep_temperatures": [1.0, 4.0],
        "sweep_betas": [0.3],
        "sweep_seeds": [0],
    }


def write_smoke_copies(folder, notebooks=None) -> list[Path]:
    """Copies of the notebooks, committed outputs included, whose parameters cell holds the
    smoke profile's settings: what nbval executes and compares in ``make test``."""
    import nbformat

    folder = Path(folder)
    out_dir = folder / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = smoke_parameters(folder)
    written = []
    for path in notebook_paths() if notebooks is None else [NOTEBOOKS / n for n in notebooks]:
        nb = nbformat.read(str(path), as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        declared = _declared(path)
        cell.source = "\n".join(f"{k} = {params[k]!r}" for k in declared)
        nbformat.write(nb, str(out_dir / path.name))
        written.append(out_dir / path.name)
    return written


def demo_parameters(dataset: str, data_root: str, device: str, profile: str) -> dict:
    tag = f"{profile}-{dataset}"
    root = Path(data_root)
    if not root.is_absolute():
        root = (ROOT / root).resolve()
    return {
        "dataset": dataset,
        "data_root": str(root),
        "device": device,
        "profile": profile,
        "runs_dir": str(ROOT / "runs" / tag),
        "figures_dir": str(ROOT / "figures"),
        "report_dir": str(ROOT / "report"),
    }


def run_demo(
    dataset: str = "shapes",
    data_root: str = "data/shapes",
    device: str = "cpu",
    profile: str = "demo",
    notebooks=None,
    parameters: dict | None = None,
    cell_timeout: int | None = CELL_TIMEOUT_S,
) -> int:
    """Execute ``notebooks`` (default: every numbered one) in order; ``parameters`` are set in
    each notebook that declares them (e.g. ``train_extra=True`` for `make methods`), on top of
    the configuration's. ``cell_timeout``: seconds a cell may run (None: no limit)."""
    from papermill.exceptions import PapermillExecutionError

    from .profiles import profile_settings

    profile_settings(profile)  # refuses an unknown profile before any work
    in_place = is_committed_configuration(dataset, data_root, device, profile)
    params = demo_parameters(dataset, data_root, device, profile)
    out_dir = Path(params["runs_dir"]) / "notebooks"
    paths = notebook_paths() if notebooks is None else [NOTEBOOKS / n for n in notebooks]
    problem = check_data(dataset, params["data_root"], profile)
    if problem:
        print(f"make demo: the {dataset} data at {params['data_root']} cannot be used:\n{problem}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    # the whole demo with the profile's own runs: they train first, in one batch, then the chapters show them
    # (runs of other epochs, seeds or sizes, given as parameters, the chapters train themselves)
    if notebooks is None and not set(parameters or {}) & {"epochs", "seeds", "image_size"}:
        from .experiment import train_demo_rows

        print("training the demo's runs (finished ones are reused) ...", flush=True)
        train_demo_rows(
            dataset=dataset, data_root=params["data_root"], runs_dir=params["runs_dir"], profile=profile, device=device
        )
    for i, nb in enumerate(paths, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(paths)}] {nb.name} ...", flush=True)
        declared = _declared(nb)
        injected = {} if in_place else {k: v for k, v in params.items() if k in declared}
        injected |= {k: v for k, v in (parameters or {}).items() if k in declared}
        try:
            executed = run_notebook(nb, injected, out_dir, cell_timeout)
        except PapermillExecutionError as error:
            print(failure_message(nb, error, out_dir / nb.name), file=sys.stderr)
            return 1
        if in_place:  # only a notebook that ran through replaces the committed one
            clean_for_commit(executed)
            shutil.copyfile(executed, nb)
        print(
            f"[{i}/{len(paths)}] {nb.name} done in {time.perf_counter() - t0:.0f}s "
            f"(total {time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    where = "written back to notebooks/" if in_place else f"in {out_dir}"
    print(f"demo finished in {time.perf_counter() - start:.0f}s; executed notebooks {where}")
    return 0


def failure_message(notebook: Path, error, executed: Path) -> str:
    """A few lines on a failed notebook: the cell, its error, where the full traceback is."""
    source = (error.source or "").strip().splitlines()
    first = next((line for line in source if line and not line.startswith("#")), "")
    return (
        f"make demo: {notebook.name} stopped in cell {error.exec_count} ({first[:80]!r}):\n"
        f"  {error.ename}: {error.evalue}\n"
        f"the executed notebook, with the full traceback: {executed}"
    )


def _declared(notebook: Path) -> set[str]:
    import papermill as pm

    return set(pm.inspect_notebook(str(notebook)))


def _without_injected_parameters(cells: list) -> list:
    return [c for c in cells if INJECTED_TAG not in c.metadata.get("tags", [])]


def clean_for_commit(path: Path) -> None:
    """Make an executed notebook fit to replace the committed one: papermill's and Jupyter's
    timing metadata go, and so does papermill's injected cell, so that "Run All" and the next
    ``make demo`` run the chapter with its own defaults (a `make sweep` run's outputs stay)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    nb.cells = _without_injected_parameters(nb.cells)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(nb, str(path))


def run_report(
    dataset: str = "shapes",
    data_root: str = "data/shapes",
    device: str = "cpu",
    profile: str = "demo",
    runs_dir=None,
    figures_dir=None,
    report_dir=None,
) -> int:
    """``make report``: every figure, table and the report again from finished runs
    (:func:`kdlib.report.build_all`; no notebook runs and nothing trains). A missing or
    unfinished run of the report's four methods is an error, not a job, and so is any run on
    this machine that is stale (other settings, data or teacher than now: the reason names
    what changed)."""
    from . import methods
    from .experiment import target_of
    from .profiles import profile_settings, run_config
    from .results import collect_runs, is_finished, stale_reason

    params = demo_parameters(dataset, data_root, device, profile)
    for name, given in (("runs_dir", runs_dir), ("figures_dir", figures_dir), ("report_dir", report_dir)):
        if given is not None:
            params[name] = str(given)
    settings = profile_settings(profile)
    kw = dict(dataset=dataset, data_root=params["data_root"], runs_dir=params["runs_dir"], profile=profile)
    missing, required = [], methods.names("report")
    for method in required:
        for seed in settings["seeds"]:
            cfg = run_config(method, seed, **kw)
            out = Path(cfg.out)
            stale = stale_reason(out, cfg)
            if stale or not is_finished(out, cfg.epochs):
                missing.append((method, f"{out}: {stale}" if stale else str(out)))
    for name in (n for n in methods.run_names() if n not in required):  # `make methods`' rows: none stale
        for path in sorted(Path(params["runs_dir"], name).glob("seed*/config.json")):
            recorded = json.loads(path.read_text())
            # a data set without an unlabeled split of its own (VOC) was given one: the run's own
            given = {"unlabeled_split": recorded["unlabeled_split"]} if recorded.get("unlabeled_split") else {}
            try:
                stale = stale_reason(path.parent, run_config(name, recorded["seed"], **kw, **given))
            except (KeyError, ValueError) as exc:
                stale = f"its config.json cannot be checked ({exc})"
            if stale:
                missing.append((name, f"{path.parent}: {stale}"))
    if dataset == "shapes":  # the runs of `make draws` and `make budget`: none stale either
        missing += _stale_condition_runs(params["data_root"], params["runs_dir"], profile)
    if missing or collect_runs(params["runs_dir"]).empty:
        targets = sorted({n if n.startswith("make ") else target_of(n) for n, _ in missing} or {"make demo"})
        print(
            "make report rebuilds from finished runs, and these are missing, unfinished or stale:\n  "
            + "\n  ".join(text for _, text in missing)
            + f"\nRun `{'` and `'.join(targets)}` (same DATASET/PROFILE) first.",
            file=sys.stderr,
        )
        return 1
    from .report import build_all

    path = build_all(
        dataset, params["data_root"], params["runs_dir"], params["figures_dir"], params["report_dir"], device
    )
    print(f"report rebuilt from the finished runs under {params['runs_dir']}: {path} and {path.with_suffix('.html')}")
    return 0


def _stale_condition_runs(data_root, runs_dir, profile: str) -> list[tuple[str, str]]:
    """(target, "folder: why") for every run under ``draws/`` and ``budget/`` that no longer
    answers its condition (other settings, data or teacher than its condition's now)."""
    from . import conditions as c
    from .profiles import run_config
    from .results import stale_reason

    folders = [(c.draw_runs_dir(runs_dir, d), c.draw_data_root(data_root, d), {}, "make draws") for d in c.DRAWS]
    folders += [
        (c.budget_runs_dir(runs_dir, f), Path(data_root), c.budget_settings(profile, f), "make budget")
        for f in c.BUDGETS
    ]
    stale = []
    for folder, root, settings, target in folders:
        for path in sorted(folder.glob("*/seed*/config.json")):
            recorded = json.loads(path.read_text())
            cfg = run_config(
                path.parent.parent.name, recorded["seed"], dataset="shapes", data_root=str(root),
                runs_dir=folder, profile=profile, **settings,
            )  # fmt: skip
            why = stale_reason(path.parent, cfg)
            if why:
                stale.append((target, f"{path.parent}: {why}"))
    return stale
