"""Nothing in the tree names a module or file that does not exist: the READMEs, docs/, the scripts, and every Python
file (docstrings, comments and code) are scanned for

- paths: ``pacs_assets/index/journal.py``, ``benchmarks/bench_search.py``, ``scripts/test.sh``, and paths
  inside the package written from its top (``index/journal.py``, ``nas/watch.py``);
- dotted names: ``pacs_assets.index.ledger``, ``pacs_assets.pipeline.reconciliation.reconcile``,
  ``benchmarks.common``: the longest prefix must be a module, and what follows it a name that module has.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("pacs_assets", "pacs_assets_tests", "benchmarks", "scripts")
SUBPACKAGES = sorted(p.name for p in (ROOT / "pacs_assets").iterdir() if (p / "__init__.py").exists()
                     or p.name == "index")
# Not preceded by a path or a dotted name: /etc/pacs_assets/pacs.yaml is a site's path, not ours.
PATH = re.compile(rf"(?<![\w./-])(?:{'|'.join(TOPS)})(?:/[\w.-]+)+")
SHORT_PATH = re.compile(rf"(?<![\w./-])(?:{'|'.join(SUBPACKAGES)})/[\w/]*\w\.(?:py|sql)\b")
DOTTED = re.compile(rf"(?<![\w./-])(?:{'|'.join(TOPS[:3])})(?:\.\w+)+")


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "scripts").glob("*.sh"))]
    for top in TOPS[:3]:
        files += sorted((ROOT / top).rglob("*.py"))
    return [f for f in files if f.exists()]


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return base if base.is_dir() else None  # a namespace package (pacs_assets/index)


def dotted_problem(name: str) -> str | None:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        found = _module_file(parts[:cut])
        if found is None:
            continue
        if cut == len(parts):
            return None
        attribute = parts[cut]
        if attribute.isalpha() and attribute.isupper():
            return None  # a placeholder: python -m benchmarks.NAME
        if found.is_dir():
            return f"{name}: no module {'.'.join(parts[:cut + 1])}"
        if not re.search(rf"\b{re.escape(attribute)}\b", found.read_text()):
            return f"{name}: {'.'.join(parts[:cut])} has no {attribute}"
        return None
    return f"{name}: no such module"


def path_problem(path: str) -> str | None:
    path = path.rstrip(".")
    target = ROOT / path
    if target.exists() or target.with_suffix(".py").exists():
        return None
    return f"{path}: no such file or folder"


def references(text: str) -> list[tuple[str, str | None]]:
    found = [(m.group(0), path_problem(m.group(0))) for m in PATH.finditer(text)]
    found += [(m.group(0), path_problem(f"pacs_assets/{m.group(0)}")) for m in SHORT_PATH.finditer(text)]
    found += [(m.group(0), dotted_problem(m.group(0))) for m in DOTTED.finditer(text)]
    return found


def test_the_checker_tells_a_stale_name_from_a_good_one():
    text = ("see pacs_assets/index/journal.py, index/ledger.py and pacs_assets.index.ledger.append_ledger; "
            "the site's /etc/pacs_assets/pacs.yaml is not ours. Stale: pacs_assets.index.store, "
            "pacs_assets/index/store.py, index/store.py, pacs_assets.index.ledger.no_such_function. "
            "python -m benchmarks.NAME")
    found = dict(references(text))
    assert {name for name, problem in found.items() if problem} == {
        "pacs_assets.index.store", "pacs_assets/index/store.py", "index/store.py",
        "pacs_assets.index.ledger.no_such_function"}
    assert {name for name, problem in found.items() if not problem} == {
        "pacs_assets/index/journal.py", "index/ledger.py", "pacs_assets.index.ledger.append_ledger", "benchmarks.NAME"}


def test_nothing_names_a_module_that_does_not_exist():
    problems = []
    for path in scanned_files():
        if path == Path(__file__):
            continue  # its own examples of stale names
        for number, line in enumerate(path.read_text().splitlines(), 1):
            problems += [f"{path.relative_to(ROOT)}:{number}: {problem}" for _, problem in references(line) if problem]
    assert not problems, "\n".join(problems)


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def link_problem(source: Path, target: str) -> str | None:
    if re.match(r"\w+://|mailto:", target):
        return None
    file, _, fragment = target.partition("#")
    path = (source.parent / file).resolve() if file else source
    if not path.exists():
        return f"{target}: no such file"
    if not fragment:
        return None
    headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return None if fragment in {anchor(h) for h in headings} else f"{target}: no such heading"


def test_the_anchor_of_a_heading_is_githubs():
    assert anchor("Several nodes in `pacs.yaml`") == "several-nodes-in-pacsyaml"
    assert anchor("Patient identity: no patient mixed up") == "patient-identity-no-patient-mixed-up"


def test_every_link_between_the_documents_leads_somewhere():
    problems = []
    for path in [f for f in scanned_files() if f.suffix == ".md"]:
        problems += [f"{path.relative_to(ROOT)}: {problem}" for target in LINK.findall(path.read_text(encoding="utf-8"))
                     if (problem := link_problem(path, target))]
    assert not problems, "\n".join(problems)


def test_no_test_asks_for_a_fixture_ci_does_not_have():
    """CI runs pytest with ``-p no:logging`` (.ci/run): ``caplog`` does not exist there, and a test that asks for
    it errors in CI while passing under a plain ``pytest``. harness.log_lines does its job."""
    import ast

    from pacs_assets_tests.harness import parse_python

    asking = [f"{p.relative_to(ROOT)}::{node.name}" for p in (ROOT / "pacs_assets_tests").rglob("*.py")
              for node in ast.walk(parse_python(p)) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
              and any(a.arg == "caplog" for a in node.args.args + node.args.kwonlyargs)]
    assert asking == []
    assert "-p no:logging" in (ROOT / ".ci" / "run").read_text()
