"""The house's layout: kdlib's modules import each other without a cycle (counting the imports
inside functions too, which would otherwise hide one), and the low-level modules stay low."""

import ast
from pathlib import Path

KDLIB = Path(__file__).resolve().parent.parent / "kdlib"


def import_graph() -> dict[str, set[str]]:
    """module -> the kdlib modules it imports, anywhere in its body."""
    modules = {p.stem for p in KDLIB.glob("*.py")}
    graph = {}
    for path in KDLIB.glob("*.py"):
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    targets.add(node.module.split(".")[0])
                else:
                    targets |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdlib."):
                targets.add(node.module.split(".")[1])
        graph[path.stem] = targets & modules - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_kdlib_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_shared_facts_sit_at_the_bottom():
    graph = import_graph()
    assert graph["conventions"] == set()  # the void label, classes, mean/std import nothing of kdlib
    assert "models" not in graph["augment"] and "train" not in graph["evaluate"]
    users = {m for m, targets in graph.items() if "train" in targets}
    # the loop's callers, and results, which asks it what a run was trained on (data, teacher)
    assert users <= {"cli", "experiment", "teacher", "bench", "results"}, users


def test_the_method_registry_sits_just_above_the_losses():
    """Config, the trainer, the report, the plots and the bench read the registry; it reads only
    the loss functions, the student-side adapters' builders (torch alone) and the shared facts, so
    any of them can import it."""
    graph = import_graph()
    assert graph["methods"] <= {"losses", "adapters", "conventions"}, graph["methods"]
    assert graph["adapters"] == set(), graph["adapters"]
    assert {"config", "train", "report", "plots", "bench", "failures"} <= {
        m for m, t in graph.items() if "methods" in t
    }
