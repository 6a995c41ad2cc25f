"""The wheel ships the product only: every pacs_assets package and its data, no tests, harness or benchmarks.
And the layers' arrows go one way (defs -> pipeline -> nas / orthanc / index), with no import cycle."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from pacs_assets_tests.harness import parse_python

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pacs_assets"
# Which top-level parts of pacs_assets each part may import. The CLI stands apart: nothing imports it.
ALLOWED = {
    "defs": {"defs", "pipeline", "nas", "orthanc", "index", "identity", "config", "errors", "process_identity"},
    "pipeline": {"pipeline", "nas", "orthanc", "index", "identity", "config", "errors"},
    "identity": {"identity", "errors"},
    "cli": {"cli", "pipeline", "identity", "nas", "orthanc", "index", "config", "config_file", "errors", "sample",
            "process_identity"},
    "index": {"index", "nas", "errors"},  # FileRecord, ScanCache, names: the index stores what nas/ reads
    "orthanc": {"orthanc", "errors"},
    "nas": {"nas", "errors"},  # a kind's own check gets the index's query as an argument (pipeline/checks.py)
    "sample": {"sample", "nas", "errors"},
    # each part's settings: nas/<kind>/settings.py, orthanc/orthanc_settings.py
    "config": {"nas", "orthanc", "errors", "config_file"},
    # where pacs.yaml is (standard library only: `pacs search` starts without pydantic)
    "config_file": {"errors"},
    "errors": set(),
    "process_identity": set(),  # which process runs a run, alive or not (the executor records, `pacs status` shows)
}


def test_wheel_holds_the_product_and_nothing_else(tmp_path):
    # From a copy of the source tree: a build writes build/ and *.egg-info beside the sources.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "var", "build", "*.egg-info",
                                                             "__pycache__"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("pacs_assets-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"pacs_assets"}, tops
    assert "pacs_assets/index/schema.sql" in names
    shipped = {n for n in names if n.endswith(".py")}
    expected = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    assert shipped == expected, expected ^ shipped


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(parse_python(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pacs_assets"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pacs_assets")}
    return found


def _part(module_path: Path) -> str:
    rel = module_path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def test_layers_import_one_way_and_the_product_never_imports_tests():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.stem in ("__init__", "definitions"):
            continue  # the code location entry points build everything
        part = _part(path)
        for module in _imports(path):
            assert not module.startswith("pacs_assets_tests"), f"{path} imports the tests ({module})"
            target = module.split(".")[1] if "." in module else module
            if target not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_no_product_module_imports_dagster_below_the_dagster_layer():
    for part in ("pipeline", "nas", "orthanc", "index", "identity"):
        for path in (PACKAGE / part).rglob("*.py"):
            tree = parse_python(path)
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert not any(n == "dagster" or n.startswith("dagster.") for n in names), path


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def test_no_two_modules_import_each_other_even_lazily():
    """An import inside a function still ties two modules together: orthanc/client.py once built OrthancNodes
    by importing orthanc/nodes.py, which imports client.py. No module is reachable from the modules it imports."""
    graph = {_module(p): {m for m in _imports(p)} for p in PACKAGE.rglob("*.py")}
    circles = []
    for start in graph:
        seen, todo = set(), [m for m in graph[start] if m != start]
        while todo:
            module = todo.pop()
            if module == start:
                circles.append(start)
                break
            if module not in seen and module in graph:
                seen.add(module)
                todo += graph[module]
    assert circles == []


SAME_CONCEPT = "same concept on"  # what a module's docstring says when its name recurs in another layer


def test_a_module_name_recurs_across_layers_only_for_one_concept_said_so():
    """Names are unique enough to grep: two modules share a name in different layers only when both say (in
    their docstring) that they are the same concept on two layers."""
    by_name: dict[str, list[Path]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.stem != "__init__" and path.parent != PACKAGE:
            by_name.setdefault(path.stem, []).append(path)
    def says_so(path: Path) -> bool:
        return SAME_CONCEPT in " ".join((ast.get_docstring(parse_python(path)) or "").split())

    unsaid = [str(p.relative_to(ROOT)) for paths in by_name.values() if len({_part(p) for p in paths}) > 1
              for p in paths if not says_so(p)]
    assert unsaid == []
