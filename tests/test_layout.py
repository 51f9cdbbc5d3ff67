"""The package's layout stays one a newcomer can read: no import circles, short modules."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dask_gmm"
MAX_LINES = 550


def package_imports():
    """module -> the package's modules it imports, at the top or inside functions."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    graph = {}
    for name in modules:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    targets.add(node.module.split(".")[0])
                else:
                    targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "dask_gmm."):
                targets.add(node.module.split(".")[1])
        graph[name] = targets & modules
    return graph


def test_no_module_imports_a_module_that_imports_it_back():
    graph = package_imports()
    cycles = []

    def visit(node, path):
        for target in graph[node]:
            if target == path[0]:
                cycles.append(path + [target])
            elif target not in path and len(path) < len(graph):
                visit(target, path + [target])

    for start in graph:
        visit(start, [start])
    assert cycles == []


def test_modules_stay_short():
    lengths = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_the_code_is_clean_under_the_configured_linter():
    """ruff, configured in pyproject.toml, over the package, tests and benchmarks."""
    ruff = Path(sys.executable).with_name("ruff")
    command = [str(ruff)] if ruff.exists() else [sys.executable, "-m", "ruff"]
    result = subprocess.run(command + ["check", "--no-cache", str(PACKAGE.parent)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_xarray_is_optional():
    """Without xarray installed, dask_gmm imports, fits and predicts numpy and dask input."""
    script = (
        "import sys; sys.modules['xarray'] = None\n"  # import xarray now raises ImportError
        "import numpy as np, dask.array as da, dask_gmm\n"
        "X = np.random.RandomState(0).normal(size=(500, 2))\n"
        "gm = dask_gmm.GaussianMixture(2, random_state=0).fit(da.from_array(X, chunks=100))\n"
        "assert gm.predict(X).shape == (500,)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


# Modules whose code runs inside chunk tasks, on dask's threads.
CHUNK_TASK_MODULES = ["_engine", "_estep", "_fused", "_fused_kmeans", "_fused_linear",
                      "_fused_missing", "_missing", "_predict", "_requests", "_stats", "_wide",
                      "outputs"]


def test_chunk_task_code_takes_products_that_release_the_gil():
    """numpy's ``@`` holds the GIL for some shapes (a vector by a vector, a short wide
    matrix by a tall one): a row check written ``flat @ flat`` made 16 threaded chunk
    tasks start one after another. Code run in chunk tasks writes ``np.dot`` (or
    ``np.matmul`` for stacks of matrices) instead."""
    found = []
    for name in CHUNK_TASK_MODULES:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.MatMult):
                found.append(f"{name}.py:{node.lineno}")
    assert found == []
