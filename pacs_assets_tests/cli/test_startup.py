"""A `pacs` process starts light: what a command does not use is never imported (the speed is bench_search's),
and the validated configuration it remembers (cli/remembered_config.py) says exactly what ``load_config`` says,
or is not used."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pacs_assets.cli.remembered_config import cache_dir, load_validated
from pacs_assets.config import load_config
from pacs_assets.errors import ConfigError
from pacs_assets.index import connection

# duckdb: the package around the engine; a release without a separate engine module (_duckdb, DuckDB >= 1.4)
# loads it for the engine.
HEAVY = ("pydantic", "pandas", "numpy", "pydicom", "dagster", "fdb", "glymur", "pynetdicom", "requests") + (
    ("duckdb",) if importlib.util.find_spec("_duckdb") else ())


def loaded_after(code: str) -> list[str]:
    """Run ``code`` in a new Python process; return its exit code and which HEAVY top-level packages it loaded."""
    probe = (f"import sys, json\n{code}\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # this test's entries only
    (tmp_path / "nas").mkdir()
    connection.connect(tmp_path / "index.duckdb").close()  # an empty index with the real schema
    config = tmp_path / "pacs.yaml"
    config.write_text("nas: [{id: ct, kind: dicom_folder, root: nas}]\nindex: {path: index.duckdb}\n")
    return config


SEARCH = "from pacs_assets.cli.main import main\nassert main(['--config', {config!r}, 'search', 'nobody']) == 0"


def test_a_search_with_a_remembered_configuration_loads_none_of_the_heavy_libraries(site):
    first = loaded_after(SEARCH.format(config=str(site)))
    assert "pydantic" in first  # nothing remembered yet: validated
    assert loaded_after(SEARCH.format(config=str(site))) == []


def test_a_command_loads_its_own_module_only_and_the_help_lists_every_command(site):
    probe = ("from pacs_assets.cli.main import COMMANDS, main\n"
             f"assert main(['--config', {str(site)!r}, 'search', 'nobody']) == 0\n"
             "print(json.dumps(sorted(c for c in COMMANDS if f'pacs_assets.cli.{c}' in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", f"import sys, json\n{probe}"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == ["search"]
    shown = subprocess.run([sys.executable, "-m", "pacs_assets.cli.main", "--help"], capture_output=True, text=True,
                           timeout=120).stdout
    assert "{sample,check,search,status,history,identity,echo}" in shown


def test_building_the_command_line_and_the_kind_registry_load_no_kind_library():
    assert loaded_after("from pacs_assets.cli.main import build_parser\nbuild_parser()") == []
    # The registry knows the kinds' names; a kind's package (and what it defers) loads when the kind is used.
    code = ("from pacs_assets.nas import registry\n"
            "assert list(registry.KINDS) == ['dicom_folder', 'firebird_jpeg2000']\n"
            "assert not any(m.startswith('pacs_assets.nas.firebird_jpeg2000') for m in sys.modules)\n"
            "assert registry.KINDS['dicom_folder'].name == 'dicom_folder'\n"
            "assert not any(m.startswith('pacs_assets.nas.firebird_jpeg2000') for m in sys.modules)")
    assert set(loaded_after(code)) == {"pydantic"}
    assert set(loaded_after("from pacs_assets.config import load_config")) == {"pydantic"}


def test_the_remembered_configuration_is_what_load_config_says(site, tmp_path):
    full = load_config(site)
    for attempt in ("validated", "remembered"):
        view = load_validated(site)
        assert [(n.id, n.kind, n.root) for n in view.nas] == [(n.id, n.kind, n.root) for n in full.nas], attempt
        assert (view.index.path, view.timezone, view.source_file) == (full.index.path, full.timezone, site), attempt
    assert view.nas[0].root == tmp_path / "nas"  # relative to the file, as load_config resolves it


def test_an_edited_file_is_validated_again_with_the_same_sentence(site):
    load_validated(site)
    site.write_text(site.read_text() + "orthanc: {url: ftp://x}\n")
    with pytest.raises(ConfigError) as cached:
        load_validated(site)
    with pytest.raises(ConfigError) as direct:
        load_config(site)
    assert str(cached.value) == str(direct.value)
    # The same through the command: the sentence, exit code 2.
    proc = subprocess.run([sys.executable, "-m", "pacs_assets.cli.main", "--config", str(site), "search", "x"],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr.strip()) == (2, f"pacs: {direct.value}")


def test_a_damaged_or_foreign_entry_is_never_trusted(site):
    load_validated(site)
    [entry] = list(cache_dir().glob("config-*.json"))
    for damaged in ("{not json", json.dumps({"key": "other", "config": {}}), ""):
        entry.write_text(damaged)
        assert load_validated(site).nas[0].id == "ct"
        assert json.loads(entry.read_text())["config"]["nas"][0]["id"] == "ct"  # written again, whole
    # An entry claiming other values for this very file and code is used only with this file's bytes.
    document = json.loads(entry.read_text())
    document["config"]["nas"][0]["id"] = "forged"
    document["key"]["sha256"] = "0" * 64
    entry.write_text(json.dumps(document))
    assert load_validated(site).nas[0].id == "ct"


def test_a_missing_file_and_an_unwritable_cache_say_what_load_config_says(site, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        load_validated(tmp_path / "nope.yaml")
    blocked = tmp_path / "blocked"
    blocked.write_text("")  # a file where the cache folder would be: nothing can be remembered
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert load_validated(site).nas[0].id == load_validated(site).nas[0].id == "ct"


@pytest.mark.parametrize("argv", [
    ["search", "--bogus"], ["search", "--help"], ["search", "--limit", "0"], ["search", "--from", "2020-13-01"],
    ["--config", "x.yaml", "search", "mueller", "--json", "hans"], ["search", "müller", "--modality", "CT"],
    ["status", "--bogus"], ["history", "--help"], ["identity", "--help"], ["echo", "--help"], ["check", "--x"]])
def test_the_parser_built_for_one_command_answers_as_the_whole_one(argv, capsys):
    """Built for the command it runs, the parser prints the same help, usage and errors (the usage line lists
    every command) and parses to the same values as the parser with every command."""
    from pacs_assets.cli.main import build_parser

    answers = []
    for parser in (build_parser(argv), build_parser()):
        try:
            parsed = vars(parser.parse_args(argv))
            code = None
        except SystemExit as exc:
            parsed, code = None, exc.code
        answers.append((parsed, code, *capsys.readouterr()))
    assert answers[0] == answers[1]
    if argv[-1] == "--bogus":  # the top parser's error: its usage line names every command
        assert "{sample,check,search,status,history,identity,echo}" in answers[0][3]

