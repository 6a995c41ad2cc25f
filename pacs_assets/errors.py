"""The one error type every layer raises for a mistake a person must fix (config, NAS, catalog)."""


class ConfigError(Exception):
    """A configuration mistake, or a NAS that cannot be read now, phrased as one sentence for a human."""


class UploadBodyError(OSError):
    """A file changed (shrank, vanished) between indexing and upload: one sentence naming what happened."""
