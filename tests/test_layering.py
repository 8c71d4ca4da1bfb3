"""Package boundaries: edge is torch-free and at the bottom; nothing generic is installed."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "export", "cloud", "proto")
# Which asymfuse packages each package may import (dependencies run one way, edge at the bottom).
ALLOWED = {
    "edge": {"edge", "proto"},
    "proto": {"proto"},
    "export": {"export", "edge", "proto"},
    "cloud": {"cloud", "edge", "export", "proto"},
}
FORBIDDEN_IN_EDGE = {"torch", "torchvision", "cv2", "faiss", "skimage"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_run_one_way(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for name in imports_of(path):
            parts = name.split(".")
            if parts[0] == "asymfuse" and len(parts) > 1 and parts[1] not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
            if package == "edge" and parts[0] in FORBIDDEN_IN_EDGE:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
            if parts[0] in PACKAGES:
                bad.append(f"{path.relative_to(ROOT)} imports top-level {name!r}; use asymfuse.{name}")
    assert not bad, "\n".join(bad)


def test_importing_edge_does_not_load_torch(tmp_path):
    code = ("import sys, asymfuse.edge, asymfuse.edge.preprocess, asymfuse.edge.spec;"
            "bad = [m for m in ('torch', 'asymfuse.cloud', 'asymfuse.export') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert res.returncode == 0, res.stdout + res.stderr


def test_nothing_generic_is_importable_outside_the_repo(tmp_path):
    code = ("import importlib.util as u, sys;"
            "found = [m for m in ('cloud', 'edge', 'export', 'proto') if u.find_spec(m)];"
            "import asymfuse.cloud, asymfuse.edge, asymfuse.export, asymfuse.proto;"
            "print(found); sys.exit(1 if found else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_subpackage_is_installed():
    import importlib

    for package in PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).as_posix().replace("/", ".")
            importlib.import_module(f"asymfuse.{rel}")


# Serving code (the searcher's side) never depends on training code; what both need lives below.
SERVING = ("cloud/index", "cloud/service", "cloud/ames")
SERVING_MAY_NOT_IMPORT = ("asymfuse.cloud.train", "asymfuse.cloud.bench", "asymfuse.cloud.demo", "asymfuse.cloud.cli")


def test_serving_code_imports_no_training_code():
    bad = []
    for folder in SERVING:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in imports_of(path):
                if name.startswith(SERVING_MAY_NOT_IMPORT):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "serving code must not import training, bench, demo or CLI code:\n" + "\n".join(bad)


# Feature extraction sits below training: what both need (process groups, devices) lives in cloud/.
FEATURES = ("cloud/features", "cloud/data")
FEATURES_MAY_NOT_IMPORT = ("asymfuse.cloud.train", "asymfuse.cloud.bench", "asymfuse.cloud.demo",
                           "asymfuse.cloud.cli", "asymfuse.cloud.service")


def test_feature_extraction_imports_no_training_code():
    bad = [f"{path.relative_to(ROOT)} imports {name}" for folder in FEATURES
           for path in sorted((ROOT / folder).rglob("*.py")) for name in imports_of(path)
           if name.startswith(FEATURES_MAY_NOT_IMPORT)]
    assert not bad, "features and data must not import training, bench, demo, CLI or service code:\n" + "\n".join(bad)


def _module_graph() -> dict[str, set[str]]:
    """``asymfuse.x.y`` -> the asymfuse modules it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = "asymfuse." + ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def test_no_two_modules_import_each_other():
    graph = _module_graph()
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph.get(b, ())})
    assert not pairs, "import circles (move what both need into a lower module):\n" + "\n".join(map(str, pairs))


def test_the_module_graph_sees_real_imports():  # so the circle check above cannot pass on an empty graph
    graph = _module_graph()
    assert "asymfuse.cloud.embed" in graph and "asymfuse.cloud.features.gallery_table" in graph["asymfuse.cloud.embed"]
