"""What a chapter calls inside its own kernel, first: the guard against parameters that
papermill injected but the chapter does not declare (papermill itself only warns)."""

from __future__ import annotations


class UnknownParameterError(ValueError):
    pass


def _assigned_names(source: str) -> set[str]:
    import ast

    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def check_injected_parameters(history=None) -> None:
    """Called first in every notebook: refuse a parameter that papermill injected but the
    notebook's parameters cell does not declare (``papermill nb.ipynb out.ipynb -p epoch 50``).
    papermill itself only warns and the run goes on with the defaults.

    It reads the kernel's input history (``In``): papermill's injected cell starts with
    ``# Parameters`` and runs right after the notebook's parameters cell. Outside a kernel,
    or with nothing injected, it does nothing."""
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        history = shell.user_ns.get("In", []) if shell is not None else []
    cells = list(history)
    for k in range(1, len(cells)):
        if cells[k].lstrip().startswith("# Parameters"):
            declared, injected = _assigned_names(cells[k - 1]), _assigned_names(cells[k])
            unknown = sorted(injected - declared)
            if unknown:
                raise UnknownParameterError(
                    f"this notebook has no parameter(s) {', '.join(unknown)}; "
                    f"its parameters cell declares {', '.join(sorted(declared))}"
                )
