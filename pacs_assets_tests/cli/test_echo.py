"""`pacs echo` against a real Orthanc: REST GET /system and a DICOM C-ECHO, one sentence per failure."""

from __future__ import annotations

import json

import pytest

from pacs_assets.cli.main import main
from pacs_assets_tests.harness import write_config
from pacs_assets_tests.services.orthanc import OrthancServer
from pacs_assets_tests.services.process import free_port


def config_for(tmp_path, url: str, dicom_port: int, aet: str = "ORTHANC"):
    path = write_config(tmp_path / "pacs.yaml", [{"id": "ct", "kind": "dicom_folder", "root": "nas"}], orthanc_url=url)
    text = path.read_text().replace("  timeout_seconds: 10\n",
                                    f"  timeout_seconds: 5\n  dicom_port: {dicom_port}\n  dicom_aet: {aet}\n")
    path.write_text(text)
    return path


def echo(config, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(config), "echo", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_both_answer(tmp_path, orthanc_env, capsys):
    config = config_for(tmp_path, orthanc_env.url, orthanc_env.dicom_port)
    code, out, err = echo(config, capsys)
    assert code == 0, err
    rest, dicom = out.splitlines()
    assert rest.startswith(f"REST: Orthanc 1.10.1 at {orthanc_env.url} answers GET /system (")
    assert dicom.startswith(f"DICOM: C-ECHO to ORTHANC at 127.0.0.1:{orthanc_env.dicom_port} succeeded (")
    code, out, _ = echo(config, capsys, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] and doc["rest"]["version"] == "1.10.1" and doc["dicom"]["ok"]


def test_wrong_password_is_http_401(tmp_path, orthanc_env, monkeypatch, capsys):
    monkeypatch.setenv("ORTHANC_PASSWORD", "wrong")
    code, out, err = echo(config_for(tmp_path, orthanc_env.url, orthanc_env.dicom_port), capsys)
    assert code == 1
    assert err.strip() == (f"REST: Orthanc at {orthanc_env.url} refused the credentials (HTTP 401): "
                           "check ORTHANC_USERNAME / ORTHANC_PASSWORD.")
    assert out.startswith("DICOM: C-ECHO to ORTHANC")  # C-ECHO needs no password


def test_a_refusal_names_the_configured_credential_variables(tmp_path, orthanc_env, monkeypatch, capsys):
    config = config_for(tmp_path, orthanc_env.url, orthanc_env.dicom_port)
    config.write_text(config.read_text().replace(
        "  timeout_seconds: 5\n", "  timeout_seconds: 5\n  username_env: PACS_ORTHANC_USER\n"
                                   "  password_env: PACS_ORTHANC_SECRET\n"))
    monkeypatch.setenv("PACS_ORTHANC_USER", orthanc_env.username)
    monkeypatch.setenv("PACS_ORTHANC_SECRET", "wrong")
    code, _, err = echo(config, capsys)
    assert code == 1
    assert err.strip() == (f"REST: Orthanc at {orthanc_env.url} refused the credentials (HTTP 401): "
                           "check PACS_ORTHANC_USER / PACS_ORTHANC_SECRET.")


def test_wrong_ports_are_named(tmp_path, orthanc_env, capsys):
    port = free_port()
    config = config_for(tmp_path, orthanc_env.url, port)
    code, out, err = echo(config, capsys)
    assert code == 1 and out.startswith("REST: Orthanc 1.10.1")
    assert err.strip() == (f"DICOM: nothing listens on 127.0.0.1:{port} (connection refused): check "
                           f"orthanc.dicom_port in {config} and that Orthanc is running.")

    config = config_for(tmp_path, orthanc_env.url, orthanc_env.http_port)  # the HTTP port by mistake
    code, out, err = echo(config, capsys)
    assert code == 1
    assert err.strip() == (f"DICOM: 127.0.0.1:{orthanc_env.http_port} aborted the association: is "
                           f"orthanc.dicom_port ({orthanc_env.http_port}) Orthanc's DICOM port (not its HTTP port)?")

    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = echo(config_for(tmp_path, url, orthanc_env.dicom_port), capsys)
    assert code == 1 and out.startswith("DICOM: C-ECHO to ORTHANC")
    assert err.strip() == f"REST: Orthanc at {url} is unreachable (connection refused or no route)."


class StrictAetOrthanc(OrthancServer):
    """An Orthanc that refuses associations not addressed to its own AE title."""

    def config(self) -> dict:
        return {**super().config(), "DicomCheckCalledAet": True}


@pytest.fixture
def strict_orthanc(tmp_path_factory, monkeypatch):
    with StrictAetOrthanc(tmp_path_factory.mktemp("strict"), aet="PACS") as server:
        monkeypatch.setenv("ORTHANC_USERNAME", server.username)
        monkeypatch.setenv("ORTHANC_PASSWORD", server.password)
        yield server


def test_rejected_association_says_why(tmp_path, strict_orthanc, capsys):
    config = config_for(tmp_path, strict_orthanc.url, strict_orthanc.dicom_port, aet="ORTHANC")
    code, out, err = echo(config, capsys)
    assert code == 1 and out.startswith("REST: Orthanc 1.10.1")
    assert err.strip() == (f"DICOM: ORTHANC at 127.0.0.1:{strict_orthanc.dicom_port} rejected the association "
                           f"(Called AE title not recognised): check orthanc.dicom_aet in {config} and that Orthanc "
                           "accepts calling AE title 'PACS_ASSETS'.")
    config = config_for(tmp_path, strict_orthanc.url, strict_orthanc.dicom_port, aet="PACS")
    assert echo(config, capsys)[0] == 0
