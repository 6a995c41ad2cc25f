"""A real private Orthanc: started, used over REST with auth, stopped by PID, ports reusable."""
from __future__ import annotations

import hashlib
import io
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pacs_assets_tests.services.orthanc import (
    OrthancServer,
    start_detached,
    stop_detached,
)
from pacs_assets_tests.services.process import pid_alive, port_is_free

pytestmark = pytest.mark.skipif(shutil.which("Orthanc") is None,
                                reason="Orthanc not installed: run scripts/install_system_packages.sh")


def small_ct() -> tuple[bytes, str]:
    """A valid 8x8 CT instance and the Orthanc ID it will get."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "LS-1", "Local^Services", "CT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    # Orthanc's instance ID: SHA-1 of PatientID|Study|Series|SOP UIDs in 5 groups of 8 hex digits.
    sha = hashlib.sha1("|".join([ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                 ds.SOPInstanceUID]).encode()).hexdigest()
    return buf.getvalue(), "-".join(sha[i:i + 8] for i in range(0, 40, 8))


def assert_stopped(pid: int, *ports: int) -> None:
    assert not pid_alive(pid)
    for port in ports:
        assert port_is_free(port), f"port {port} still busy after stop"


def test_start_upload_auth_stop_restart(tmp_path):
    workdir = tmp_path / "orthanc"
    server = OrthancServer(workdir, aet="LOCALTEST")
    body, orthanc_id = small_ct()
    with server:
        pid, http_port, dicom_port = server.pid, server.http_port, server.dicom_port
        assert server.url == f"http://127.0.0.1:{http_port}"
        assert requests.get(f"{server.url}/system", timeout=5).status_code == 401
        assert requests.get(f"{server.url}/system", auth=("pacs", "wrong"), timeout=5).status_code == 401
        system = requests.get(f"{server.url}/system", auth=server.auth, timeout=5).json()
        assert system["DicomAet"] == "LOCALTEST" and system["DicomPort"] == dicom_port
        assert "gdcm" in requests.get(f"{server.url}/plugins", auth=server.auth, timeout=5).json()

        answer = requests.post(f"{server.url}/instances", data=body, auth=server.auth, timeout=30,
                               headers={"Content-Type": "application/dicom"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["ID"] == orthanc_id and answer.json()["Status"] == "Success"
        again = requests.post(f"{server.url}/instances", data=body, auth=server.auth, timeout=30)
        assert again.json()["Status"] == "AlreadyStored"
        assert (workdir / "orthanc.json").stat().st_mode & 0o077 == 0  # holds the password
    assert_stopped(pid, http_port, dicom_port)

    # Same folders and ports right after stop: storage and index survived.
    with OrthancServer(workdir, http_port=http_port, dicom_port=dicom_port,
                       password=server.password) as again_server:
        got = requests.get(f"{again_server.url}/instances", auth=again_server.auth, timeout=5).json()
        assert got == [orthanc_id]
        pid = again_server.pid
    assert_stopped(pid, http_port, dicom_port)


def test_start_fails_clearly_when_port_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # Orthanc 1.10.1 binds all interfaces
        taken.listen()
        server = OrthancServer(tmp_path / "o", http_port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="Orthanc on http://127.0.0.1") as err:
            server.start(timeout=20)
    assert "orthanc.log" in str(err.value)
    assert server.pid is None


def test_missing_binary_names_the_install_script(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="install_system_packages.sh"):
        OrthancServer(tmp_path / "o").start()


def test_detached_outlives_its_python_process(tmp_path):
    workdir = tmp_path / "detached"
    # `start` in one process that then exits...
    subprocess.run([sys.executable, "-c",
                    "import sys; from pacs_assets_tests.services.orthanc import start_detached;"
                    "print(start_detached(sys.argv[1]).pid)", str(workdir)],
                   check=True, timeout=60, capture_output=True, text=True)
    # ...and `stop` from another (this one).
    server = OrthancServer.from_pidfile(workdir)
    assert server is not None and pid_alive(server.pid)
    env = dict(line.split("=", 1) for line in (workdir / "orthanc.env").read_text().splitlines())
    assert env["ORTHANC_URL"] == server.url and env["ORTHANC_USERNAME"] == "pacs"
    assert requests.get(f"{server.url}/system", auth=server.auth, timeout=5).status_code == 200
    assert start_detached(workdir).pid == server.pid  # already running: no second server

    assert stop_detached(workdir) is True
    assert_stopped(server.pid, server.http_port, server.dicom_port)
    assert not (workdir / "orthanc.pid").exists() and not (workdir / "orthanc.env").exists()
    assert stop_detached(workdir) is False
