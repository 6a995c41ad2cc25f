"""The one place Orthanc settings become a client: ``connect``.

One URL gives an ``OrthancClient``; ``more_urls`` gives ``OrthancNodes`` over every node. Both are an
``OrthancApi``, so no caller asks which. The Dagster resource (defs/resources.py) calls it with the credentials
Dagster resolved; the command line with ``settings.credentials_from_environment()``.
"""

from __future__ import annotations

from pacs_assets.orthanc.api import OrthancApi
from pacs_assets.orthanc.client import OrthancClient
from pacs_assets.orthanc.nodes import OrthancNodes
from pacs_assets.orthanc.orthanc_settings import OrthancSettings


def connect(settings: OrthancSettings, username: str | None, password: str | None, *,
            timeout: float | None = None, retries: int | None = None, backoff: float = 0.5) -> OrthancApi:
    """A client for ``settings``; ``timeout`` and ``retries`` override the settings' own (a sensor tick or a
    command that must answer quickly); ``backoff`` is the first pause between retries, in seconds."""
    timeout = settings.timeout_seconds if timeout is None else timeout
    retries = settings.retries if retries is None else retries
    names = (settings.username_env, settings.password_env)
    if not settings.more_urls:
        return OrthancClient(settings.url, username, password, timeout=timeout, retries=retries, backoff=backoff,
                             credential_names=names)
    # One retry per node when it does not answer: it is skipped for the next one, not waited for. An answer
    # that can succeed later (HTTP 503 "could not serialize access" when two nodes write one series at once)
    # gets every retry: on PostgreSQL it is routine, not a sign that the node is down.
    return OrthancNodes([OrthancClient(u, username, password, timeout=timeout, retries=retries,
                                       connect_retries=min(retries, 1), backoff=backoff, credential_names=names)
                         for u in settings.urls])
