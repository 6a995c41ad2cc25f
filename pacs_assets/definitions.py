"""The Dagster code location, built from the site configuration ($PACS_CONFIG; see config.py).

A mistake in the configuration fails the load with the one sentence ``pacs check`` prints, not with a
traceback through Dagster's loader: where the error goes uncaught (``dagster asset materialize -m ...``)
the interpreter prints just that sentence; where Dagster reports it (``dagster definitions validate``,
the UI's code location), the sentence is the message and the stack is one frame of this file.
"""

import logging
import sys

from pacs_assets.config import ConfigError, load_config
from pacs_assets.defs.definitions import build_definitions


def _print_config_errors_as_one_sentence():
    previous = sys.excepthook

    def hook(kind, value, tb):
        if isinstance(value, ConfigError):
            print(f"pacs_assets: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    sys.excepthook = hook
    # A code server (started for `-w workspace.yaml`) logs the load error with its whole traceback.
    logging.getLogger("dagster.code_server").addFilter(_one_sentence_record)


def _one_sentence_record(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__ or error.__context__
    if error is not None:
        record.msg, record.args, record.exc_info, record.exc_text = f"{record.getMessage()}: {error}", (), None, None
    return True


try:
    defs = build_definitions(load_config())
except ConfigError as exc:
    _print_config_errors_as_one_sentence()
    raise ConfigError(str(exc)) from None
