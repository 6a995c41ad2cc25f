"""The Dagster code location, built from the site configuration ($PACS_CONFIG; see config.py).

A mistake in the configuration fails the load with the one sentence ``pacs check`` prints, not with a
traceback through Dagster's loader: where the error goes uncaught (``dagster asset materialize -m ...``)
the interpreter prints just that sentence; where Dagster reports it (``dagster definitions validate``,
the UI's code location), the sentence is the message and the stack is one frame of this file.

The only definitions module: ``[tool.dg]`` in pyproject.toml and workspace.yaml both name it. Beside the
site's graphs (defs/site.py) it loads the ``pacs_assets.defs`` folder the way a ``dg`` project does, so what
``dg scaffold defs`` adds there is loaded too (today the folder holds factories only, which add nothing).
"""

import logging
import sys
from pathlib import Path

from dagster import Definitions, load_from_defs_folder

from pacs_assets.config import ConfigError, load_config
from pacs_assets.defs.site import build_definitions


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
    defs = Definitions.merge(build_definitions(load_config()),
                             load_from_defs_folder(path_within_project=Path(__file__).parent))
except ConfigError as exc:
    _print_config_errors_as_one_sentence()
    raise ConfigError(str(exc)) from None
