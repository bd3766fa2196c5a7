"""One concept, one home: each status and each list of names is written once in hpo/, and no
module of hpo imports, at any depth or inside a function, a module that imports it back."""

import ast
import collections
from pathlib import Path

from hpo import registry
from hpo.status import Status

HPO = Path(__file__).parents[1] / "hpo"
# the names a config or a space chooses among (metrics are also the fields a trial reports,
# which the trainer and the record name one by one, so they are not checked here)
TABLES = {name: set(getattr(registry, name)) for name in (
    "OPTIMIZERS", "SCHEDULES", "ACTIVATIONS", "BACKBONES", "SAMPLERS", "TRACKERS")}


def modules():
    for path in sorted(HPO.rglob("*.py")):
        name = ".".join(path.relative_to(HPO.parent).with_suffix("").parts)
        yield name.removesuffix(".__init__"), ast.parse(path.read_text())


def test_each_status_is_written_in_one_module():
    words = {s.value for s in Status}
    homes = collections.defaultdict(set)
    for name, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in words:
                homes[node.value].add(name)
    assert dict(homes) == {w: {"hpo.status"} for w in words}


def test_no_module_but_the_registry_lists_names_of_one_of_its_tables():
    seconds = []
    for name, tree in modules():
        if name == "hpo.registry":
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                words = {i.value for i in node.elts if isinstance(i, ast.Constant)}
                for table, names in TABLES.items():
                    if len(words & names) >= 2:
                        seconds.append(f"{name}:{node.lineno} lists {table}")
    assert not seconds


def test_no_import_cycle_in_hpo_counting_imports_inside_functions():
    graph = {}
    for name, tree in modules():
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets.add(node.module)
                targets |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t.startswith("hpo")}
    graph = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    # a package's __init__ is not imported by `from hpo.tuning.x import y` in a way that runs
    # anything of ours: hpo/__init__ and hpo/tuning/__init__ import nothing at their top
    cycles = [m for m in graph if _reaches(graph, m, m)]
    assert not cycles, cycles


def _reaches(graph, start, goal) -> bool:
    seen, todo = set(), list(graph[start])
    while todo:
        m = todo.pop()
        if m == goal:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return False


def test_only_the_tuning_package_imports_ray():
    users = [name for name, tree in modules() for node in ast.walk(tree)
             if isinstance(node, (ast.Import, ast.ImportFrom))
             and any(n == "ray" or n.startswith("ray.") for n in _imported(node))]
    assert {u for u in users if not u.startswith("hpo.tuning")} == {"hpo.compat"}


def _imported(node):
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [node.module or ""]
