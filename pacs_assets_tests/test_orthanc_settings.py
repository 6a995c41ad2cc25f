"""The Orthanc settings are declared once (orthanc/orthanc_settings.py): pacs.yaml's ``orthanc:`` block, the Dagster
resource that every asset, check and sensor takes its client from, and that client carry the same values."""

from __future__ import annotations

from dagster import AssetKey, EnvVar, build_sensor_context

from pacs_assets.config import load_config
from pacs_assets.defs.arrivals import SENSOR_NAME
from pacs_assets.defs.site import build_definitions
from pacs_assets.orthanc.client import OrthancClient
from pacs_assets.orthanc.nodes import OrthancNodes
from pacs_assets.orthanc.orthanc_settings import OrthancSettings
from pacs_assets_tests.harness import write_config

SITE_ORTHANC = {"url": "http://127.0.0.1:9/", "more_urls": ["http://127.0.0.1:10"],
                "username_env": "SITE_ORTHANC_USER", "password_env": "SITE_ORTHANC_PASSWORD",
                "timeout_seconds": 7.5, "concurrency": 3, "retries": 2, "run_retries": 1,
                "run_retry_delay_seconds": 5, "outage_wait_seconds": 9, "changes_sensor_interval_seconds": 40,
                "dicom_aet": "PACS", "dicom_port": 11112}


def test_every_orthanc_option_reaches_the_resource_and_its_client(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    path = write_config(tmp_path / "pacs.yaml", [{"id": "ct", "kind": "dicom_folder", "root": "a"}],
                        orthanc_url="unused", orthanc=SITE_ORTHANC)
    config = load_config(path)
    defs = build_definitions(config)
    resource = defs.resources["orthanc"]
    # The resource adds the two credentials and nothing else: any other option is the settings' own field.
    assert set(type(resource).model_fields) == set(OrthancSettings.model_fields) | {"username", "password"}
    assert resource.model_dump(include=set(OrthancSettings.model_fields)) == config.orthanc.model_dump()
    assert config.orthanc.url == "http://127.0.0.1:9" and config.orthanc.concurrency == 3
    # Credentials stay the names of the variables until Dagster resolves them: its UI never shows a secret.
    assert isinstance(resource.username, EnvVar) and resource.username == "SITE_ORTHANC_USER"
    assert isinstance(resource.password, EnvVar) and resource.password == "SITE_ORTHANC_PASSWORD"

    monkeypatch.setenv("SITE_ORTHANC_USER", "alice")
    monkeypatch.setenv("SITE_ORTHANC_PASSWORD", "s3cret")
    with build_sensor_context(resources=defs.resources) as context:  # resolved as a sensor or a step gets it
        live = context.resources.orthanc
        client = live.client()
    assert (live.username, live.password, live.outage_wait_seconds) == ("alice", "s3cret", 9)
    assert isinstance(client, OrthancNodes)
    assert [(c.url, c.auth, c.timeout, c.retries) for c in client.clients] == [
        ("http://127.0.0.1:9", ("alice", "s3cret"), 7.5, 2), ("http://127.0.0.1:10", ("alice", "s3cret"), 7.5, 2)]

    policy = defs.resolve_assets_def(AssetKey(["ct", "orthanc_instances"])).op.retry_policy
    assert (policy.max_retries, policy.delay) == (1, 5)
    assert defs.resolve_sensor_def(SENSOR_NAME).minimum_interval_seconds == 40


def test_several_nodes_answer_everything_one_node_answers():
    """OrthancNodes stands in for OrthancClient everywhere: a method added to the client alone (not to their
    shared OrthancApi) would be missing on a site with several nodes."""
    node_specific = {"session", "poster", "auth", "backoff", "retries", "connect_retries"}
    one = {name for name in dir(OrthancClient) if not name.startswith("_")} - node_specific
    assert one - set(dir(OrthancNodes)) == set()
    assert "__getattr__" not in vars(OrthancNodes)
