"""The README and docs/ show only commands that work: every `pacs`, `dagster` and `dg` command in their code
blocks runs, exactly as written, from the repository folder against a sample site (`pacs sample`) and a real
Orthanc, and exits 0. The README's commands run first, then each file of DOCS in that order; commands that depend
on each other (an identity decision before the catch-up it releases) stay together in one file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pacs_assets_tests.harness import materialize_nas

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROGRAMS = ("pacs", "dagster", "dg")
# Run in this order, after the README; a new file in docs/ must be added here (a test checks it).
DOCS = ("docs/design.md", "docs/production.md", "docs/speed.md")
# Shown in the README or docs/ but not run here, each with the reason.
EXEMPT = {
    "bash scripts/demo.sh": "installs system packages, then serves `dagster dev` until Ctrl-C",
    "bash scripts/test.sh": "runs this very test suite",
    "dagster dev": "a server that runs until stopped",
    "dg dev": "a server that runs until stopped (the same as `dagster dev -w workspace.yaml`)",
}
_FENCE = re.compile(r"^\s*```")


def readme_commands(text: str) -> list[str]:
    """The commands of the README's fenced code blocks, continuation lines joined, comments kept for bash."""
    commands, in_block, pending = [], False, ""
    for line in text.splitlines():
        if _FENCE.match(line):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.split(" ", 1)[0] in PROGRAMS or line.startswith("bash "):
            commands.append(line)
    return commands


def is_exempt(command: str) -> bool:
    return any(command == c or command.startswith(c + " ") for c in EXEMPT)


def documented_commands() -> list[str]:
    """Every command of the README, then of each file of DOCS, in file order."""
    return [c for name in ("README.md", *DOCS) for c in readme_commands((REPO / name).read_text(encoding="utf-8"))]


def test_the_readme_names_its_commands_and_its_exemptions():
    commands = documented_commands()
    assert {c.split("#")[0].strip() for c in commands if is_exempt(c)} >= {"bash scripts/demo.sh", "dg dev"}
    assert [c for c in commands if c.startswith("bash ") and not is_exempt(c)] == []
    assert len([c for c in commands if not is_exempt(c)]) >= 8


def test_every_doc_is_run():
    assert sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")) == sorted(DOCS)
    assert any(readme_commands((REPO / name).read_text(encoding="utf-8")) for name in DOCS)


@pytest.fixture(scope="module")
def sample_site(tmp_path_factory):
    """`pacs sample` (its plain-DICOM NAS) imported into a real Orthanc, and the environment the README's commands
    expect (PACS_CONFIG, ORTHANC_USERNAME/ORTHANC_PASSWORD, DAGSTER_HOME, the venv's programs on PATH)."""
    from pacs_assets_tests.services.orthanc import OrthancServer

    work = tmp_path_factory.mktemp("readme")
    with OrthancServer(work / "orthanc").throwaway() as orthanc, pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORTHANC_USERNAME", orthanc.username)
        mp.setenv("ORTHANC_PASSWORD", orthanc.password)
        proc = subprocess.run([str(BIN / "pacs"), "sample", "--out", str(work / "site"), "--no-firebird",
                               "--orthanc-url", orthanc.url], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        config = work / "site" / "pacs.yaml"
        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
        raw["orthanc"].update(dicom_port=orthanc.dicom_port, run_retries=0)
        config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        # So search, status and history have something to show; archive_nas after ct_nas, so that its patient
        # ID collisions are held and `pacs identity` has them to show (README, Patient identity).
        assert materialize_nas(config, "ct_nas").success
        assert materialize_nas(config, "archive_nas").success
        # The README's examples name dates of a real site; the sample's partitions start 60 days ago.
        raw["nas"][0]["partitions_start"] = min(re.findall(r"\d{4}-\d{2}-\d{2}", " ".join(RUNNABLE)))
        config.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        home = work / "dagster_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        yield {**os.environ, "PACS_CONFIG": str(config), "DAGSTER_HOME": str(home),
               "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


RUNNABLE = [c for c in documented_commands() if not is_exempt(c)]


@pytest.mark.parametrize("command", RUNNABLE)
def test_readme_command_works(sample_site, command):
    if command.split(" ", 1)[0] == "dg" and shutil.which("dg", path=sample_site["PATH"]) is None:
        pytest.fail("dg is not installed: it is a dependency of the project (pip install -e .)")
    proc = subprocess.run(["bash", "-c", command], cwd=REPO, env=sample_site, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert "backfill_policy" not in proc.stdout  # its BetaWarning is accepted (defs/assets.py)
