"""The code location as Dagster loads it: one graph per NAS, shared daily partitions, a valid instance config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from dagster import AssetKey, BackfillPolicy, BetaWarning, DailyPartitionsDefinition

from pacs_assets.config import load_config
from pacs_assets.defs.site import build_definitions
from pacs_assets_tests.harness import write_config

REPO = Path(__file__).resolve().parents[1]


def two_nas_config(tmp_path) -> Path:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    return write_config(tmp_path / "pacs.yaml", [
        {"id": "ct_nas", "kind": "dicom_folder", "root": "a", "partitions_start": "2020-01-01"},
        {"id": "mr_nas", "kind": "dicom_folder", "root": "b", "partitions_start": "2021-06-01"},
    ], orthanc_url="http://127.0.0.1:8042")


def test_one_graph_per_nas_with_shared_partitions(tmp_path):
    defs = build_definitions(load_config(two_nas_config(tmp_path)))
    graph = defs.resolve_asset_graph()
    for nas_id, start in (("ct_nas", "2020-01-01"), ("mr_nas", "2021-06-01")):
        keys = [AssetKey([nas_id, name]) for name in ("file_inventory", "dicom_index", "orthanc_instances")]
        nodes = [graph.get(k) for k in keys]
        assert {n.group_name for n in nodes} == {nas_id}
        assert graph.get(keys[1]).parent_keys == {keys[0]}
        assert graph.get(keys[2]).parent_keys == {keys[1]}
        parts = {n.partitions_def for n in nodes}
        assert len(parts) == 1
        (part,) = parts
        assert isinstance(part, DailyPartitionsDefinition) and part.get_first_partition_key() == start
        assert all(n.backfill_policy == BackfillPolicy.single_run() for n in nodes)
    assert defs.resolve_job_def("ct_nas_job") is not None


def test_dagster_validates_the_workspace_with_our_instance_config(tmp_path):
    config = two_nas_config(tmp_path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "PACS_CONFIG": str(config), "DAGSTER_HOME": str(home)}
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "All code locations passed validation" in proc.stderr + proc.stdout


def test_building_the_definitions_emits_no_beta_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what pytest and `python -W` do: the filter must hold against it
        build_definitions(load_config(two_nas_config(tmp_path)))
    assert [str(w.message) for w in caught if issubclass(w.category, BetaWarning)] == []


def _dagster(tmp_path, *args: str, config: Path) -> list[str]:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "PACS_CONFIG": str(config), "DAGSTER_HOME": str(home)}
    proc = subprocess.run([str(Path(sys.executable).parent / "dagster"), *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode != 0
    return proc.stdout.splitlines()


TYPO_SENTENCE = "unknown key 'orthanc.ulr' (check its spelling)."


def _config_with_a_typo(tmp_path) -> Path:
    config = two_nas_config(tmp_path)
    config.write_text(config.read_text().replace("  url:", "  ulr:"))
    return config


@pytest.mark.parametrize("command", [
    ["definitions", "validate", "-w", "workspace.yaml"],
    ["asset", "materialize", "-m", "pacs_assets.definitions", "--select", "ct_nas/file_inventory",
     "--partition", "2024-01-01"],
])
def test_a_config_typo_stops_the_dagster_cli_with_one_sentence(tmp_path, command):
    lines = _dagster(tmp_path, *command, config=_config_with_a_typo(tmp_path))
    assert len(lines) < 15, "\n".join(lines)
    # Past Dagster's own SupersessionWarning (two lines), the first lines say what is wrong.
    said = [line for line in lines if "SupersessionWarning" not in line and "return callback(" not in line]
    assert any(TYPO_SENTENCE in line for line in said[:3]), "\n".join(lines)
    assert "Traceback" not in "\n".join(lines)


def test_a_config_typo_is_the_first_error_a_workspace_command_logs(tmp_path):
    """With -w workspace.yaml a code server loads the code: its error line is the sentence (the CLI then
    repeats the error with Dagster's stack trace, which this project does not control)."""
    lines = _dagster(tmp_path, "job", "launch", "-j", "ct_nas_job", "-w", "workspace.yaml",
                     config=_config_with_a_typo(tmp_path))
    first_error = next(line for line in lines if "ERROR" in line or "Error" in line)
    assert TYPO_SENTENCE in first_error, "\n".join(lines)


def test_the_code_location_loads_what_dg_scaffold_adds_to_the_defs_folder(tmp_path):
    """`dg scaffold defs dagster.asset scaffolded.py` writes the file into the defs folder: the one definitions
    module loads it."""
    project = tmp_path / "project"
    shutil.copytree(REPO, project, ignore=shutil.ignore_patterns(".git", ".venv", "var", "build", "*.egg-info",
                                                                 "__pycache__", "pacs_assets_tests", "benchmarks"))
    (project / "pacs_assets" / "defs" / "scaffolded.py").write_text(
        "import dagster as dg\n\n\n@dg.asset\ndef scaffolded_probe() -> None:\n    pass\n")
    env = {**os.environ, "PACS_CONFIG": str(two_nas_config(tmp_path)), "PYTHONPATH": str(project)}
    probe = ("from dagster import AssetKey; from pacs_assets.definitions import defs; "
             "graph = defs.resolve_asset_graph(); "
             "print(graph.has(AssetKey('scaffolded_probe')), graph.has(AssetKey(['ct_nas', 'dicom_index'])))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True"]
