"""``make demo``: execute every numbered notebook in order with papermill.

Executed copies go under ``runs/<profile>-<dataset>/notebooks/`` (the source notebooks are
never touched); each notebook is run with ``cwd`` set to ``notebooks/``, the ``python3``
kernel and a per-cell timeout. Parameters the notebook does not declare are refused (papermill
itself only warns).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT_S = 3600


class UnknownParameterError(ValueError):
    pass


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


def run_notebook(notebook: Path, parameters: dict, out_dir: Path, timeout: int = CELL_TIMEOUT_S) -> Path:
    import papermill as pm

    check_parameters(notebook, parameters)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / notebook.name
    pm.execute_notebook(
        str(notebook), str(output), parameters=parameters, kernel_name="python3",
        cwd=str(notebook.parent), execution_timeout=timeout, progress_bar=False,
        log_output=False, report_mode=False,
    )  # fmt: skip
    return output


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


def run_demo(dataset: str = "shapes", data_root: str = "data/shapes", device: str = "cpu",
             profile: str = "demo", notebooks=None) -> int:  # fmt: skip
    from .experiment import profile_settings

    profile_settings(profile)  # refuses an unknown profile before any work
    params = demo_parameters(dataset, data_root, device, profile)
    out_dir = Path(params["runs_dir"]) / "notebooks"
    paths = notebook_paths() if notebooks is None else [NOTEBOOKS / n for n in notebooks]
    start = time.perf_counter()
    for i, nb in enumerate(paths, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(paths)}] {nb.name} ...", flush=True)
        declared = _declared(nb)
        run_notebook(nb, {k: v for k, v in params.items() if k in declared}, out_dir)
        print(f"[{i}/{len(paths)}] {nb.name} done in {time.perf_counter() - t0:.0f}s "
              f"(total {time.perf_counter() - start:.0f}s)", flush=True)  # fmt: skip
    print(f"demo finished in {time.perf_counter() - start:.0f}s; executed notebooks in {out_dir}")
    return 0


def _declared(notebook: Path) -> set[str]:
    import papermill as pm

    return set(pm.inspect_notebook(str(notebook)))


if __name__ == "__main__":
    sys.exit(run_demo())


def strip_execution_metadata(path: Path) -> None:
    """Remove papermill's and Jupyter's timing metadata so committed notebooks stay clean."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(nb, str(path))


def refresh_notebooks(notebooks=None) -> int:
    """Re-execute the source notebooks in place with their committed (smoke) parameters, so
    their saved outputs are what nbval compares against; then strip timing metadata."""
    paths = notebook_paths() if notebooks is None else [NOTEBOOKS / n for n in notebooks]
    for nb in paths:
        t0 = time.perf_counter()
        run_notebook(nb, {}, nb.parent)
        strip_execution_metadata(nb)
        print(f"{nb.name} refreshed in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


def run_report(dataset: str = "shapes", data_root: str = "data/shapes", device: str = "cpu",
               profile: str = "demo", runs_dir=None) -> int:  # fmt: skip
    """``make report``: every figure, table and the report again from finished runs. The
    notebooks reuse finished runs, so nothing trains; missing runs are an error, not a job."""
    from .experiment import collect_runs, is_finished, profile_settings, run_dir, stale_reason
    from .train import Config

    params = demo_parameters(dataset, data_root, device, profile)
    if runs_dir is not None:
        params["runs_dir"] = str(runs_dir)
    settings = profile_settings(profile)
    missing = []
    for method in ("none", "feature", "response", "both"):
        for seed in settings["seeds"]:
            out = run_dir(params["runs_dir"], method, seed)
            stale = stale_reason(out, Config(method=method, dataset=dataset, data_root=str(data_root)))
            if stale or not is_finished(out, settings["epochs"]):
                missing.append(f"{out}: {stale}" if stale else str(out))
    if missing or collect_runs(params["runs_dir"]).empty:
        print("make report rebuilds from finished runs, and these are missing, unfinished or stale:\n  "
              + "\n  ".join(missing) + "\nRun `make demo` (same DATASET/PROFILE) first.", file=sys.stderr)  # fmt: skip
        return 1
    return run_demo(dataset, data_root, device, profile)
