"""The package's import graph: no circle, and no module importing upwards.

Read from the code's own import statements (module level and inside functions), not by importing
anything. "Upwards" here means a module importing the package face (``radi_fast/__init__.py``),
which imports every public module: such an import hides a circle behind the face.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# kernels/ is installed as radi_fast.kernels (setup.py's package_dir)
FOLDERS = {"radi_fast": os.path.join(ROOT, "radi_fast"), "radi_fast.kernels": os.path.join(ROOT, "kernels")}


def package_modules():
    found = {}
    for package, top in FOLDERS.items():
        for folder, _, files in os.walk(top):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, top)[:-3].replace(os.sep, ".")
                    rel = "" if rel == "__init__" else rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
                    found[package + ("." + rel if rel else "")] = path
    return found


def resolve(module: str, is_package: bool, node, modules) -> list:
    """Absolute names an ``import`` / ``from ... import`` statement of ``module`` refers to:
    ``from X import name`` is X itself unless ``name`` is a submodule of X."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = module if is_package else module.rsplit(".", 1)[0]
    for _ in range(max(node.level - 1, 0)):
        base = base.rsplit(".", 1)[0]
    prefix = (base + ("." + node.module if node.module else "")) if node.level else node.module
    return [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix for alias in node.names]


def import_graph():
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(open(path).read(), path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in resolve(name, path.endswith("__init__.py"), node, modules):
                    # the deepest module of the package the statement names
                    while target and target not in modules and "." in target:
                        target = target.rsplit(".", 1)[0]
                    if target in modules and target != name:
                        targets.add(target)
        graph[name] = targets
    return graph


def test_no_import_circles():
    graph = import_graph()
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_imports_the_package_face():
    graph = import_graph()
    upward = sorted(name for name, targets in graph.items() if "radi_fast" in targets and name != "radi_fast"
                    and not name.endswith(".__init__"))
    # a subpackage face (ops/__init__.py) imports nothing; the package face imports the public modules
    assert upward == [], upward


def test_kernels_are_a_leaf_package():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("radi_fast.kernels"):
            assert all(t.startswith("radi_fast.kernels") for t in targets), (name, targets)


def test_the_graph_is_read():
    # a negative control: the reader sees the arrows that must be there
    graph = import_graph()
    assert "radi_fast.ops.pairwise_cpu" in graph["radi_fast.pairwise"]
    assert "radi_fast._validation" in graph["radi_fast.pairwise"]
    assert "radi_fast.ops.teacher" in graph["radi_fast.ops.pairwise_triton"]
    assert "radi_fast.kernels.sinkhorn" in graph["radi_fast.ops.pairwise_triton"]
    assert "radi_fast.kernels.common" in graph["radi_fast.kernels.sinkhorn"]
