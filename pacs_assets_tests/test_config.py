"""Configuration mistakes become one sentence naming the file and the key."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pacs_assets.config import ConfigError, load_config

GOOD = """
nas:
  - id: ct
    kind: dicom_folder
    root: nas
index:
  path: index.duckdb
"""


def write(tmp_path, text):
    path = tmp_path / "pacs.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")
    return message


def test_good_config_resolves_paths_relative_to_the_file(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert config.nas[0].root == tmp_path / "nas"
    assert config.index.path == tmp_path / "index.duckdb"
    assert config.orthanc.url == "http://127.0.0.1:8042"


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("root: nas", "rot: nas"), "missing key 'nas[0].root'"),
    (GOOD + "orthanc:\n  ulr: http://x\n", "unknown key 'orthanc.ulr' (check its spelling)"),
    (GOOD.replace("dicom_folder", "ftp_folder"), "'nas[0].kind' must be one of dicom_folder, firebird_jpeg2000"),
    (GOOD.replace("    kind: dicom_folder\n", ""), "missing key 'nas[0].kind'"),
    (GOOD.replace("index:\n  path: index.duckdb\n", ""), "missing key 'index'"),
    (GOOD + "orthanc:\n  url: 127.0.0.1:8042\n", "key 'orthanc.url' is invalid: must start with http:// or https://"),
    (GOOD.replace("id: ct", "id: CT Scanner"), "key 'nas[0].id' is invalid"),
    (GOOD + "  - id: ct\n    kind: dicom_folder\n    root: x\n", None),
    ("nas: [", "is not valid YAML at line"),
    ("- just\n- a list\n", "must hold a mapping"),
])
def test_mistakes_are_one_sentence_naming_the_key(tmp_path, text, expected):
    if expected is None:  # the duplicated id: appended NAS lands in the index block; write it properly
        text = GOOD.replace("index:", "  - id: ct\n    kind: dicom_folder\n    root: x\nindex:")
        expected = "NAS id 'ct' is used twice"
    message = error_of(tmp_path, text)
    assert expected in message
    assert str(tmp_path / "pacs.yaml") in message


def test_missing_file_and_missing_env(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    monkeypatch.delenv("PACS_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="set PACS_CONFIG"):
        load_config()


def test_cli_prints_the_sentence_not_a_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("root: nas", "rot: nas"))
    proc = subprocess.run([sys.executable, "-m", "pacs_assets.cli.main", "--config", str(path), "check"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"pacs: {path}: missing key 'nas[0].root'."


def test_cli_check_names_a_missing_root_and_a_down_orthanc(tmp_path):
    path = write(tmp_path, GOOD + "orthanc:\n  url: http://127.0.0.1:9\n")
    proc = subprocess.run([sys.executable, "-m", "pacs_assets.cli.main", "--config", str(path), "check"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"NAS 'ct': root folder {tmp_path / 'nas'} does not exist or is not a folder (is the NAS mounted?).",
        "Orthanc at http://127.0.0.1:9 is unreachable (connection refused or no route).",
    ]


def test_cli_check_calls_an_empty_root_an_outage_as_the_run_would(tmp_path):
    """A mount point whose share is not mounted is an empty folder: `pacs check` must not call it readable."""
    (tmp_path / "nas").mkdir()
    path = write(tmp_path, GOOD + "orthanc:\n  url: http://127.0.0.1:9\n")
    proc = subprocess.run([sys.executable, "-m", "pacs_assets.cli.main", "--config", str(path), "check"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith(f"NAS 'ct': root folder {tmp_path / 'nas'} is empty: treating it as an outage")
    assert "readable" not in proc.stdout
    (tmp_path / "nas" / "IM0001.dcm").write_bytes(b"\0" * 200)
    proc = subprocess.run([sys.executable, "-m", "pacs_assets.cli.main", "--config", str(path), "check"],
                          capture_output=True, text=True)
    assert f"NAS 'ct' (dicom_folder): {tmp_path / 'nas'} is readable" in proc.stdout
