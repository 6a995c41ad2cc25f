"""A walk as the pipeline runs it (``take_inventory``), or one watch tick, in a process of its own: what the
permission tests run as the service user. One JSON argument in, one JSON line out.

    python -m pacs_assets_tests.services.walk_as_user '{"do": "inventory", "root": ..., "index": ..., ...}'
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

from pacs_assets.errors import ConfigError
from pacs_assets.nas.dicom_folder.settings import DicomFolderNas
from pacs_assets.nas.dicom_folder.source import DicomFolderSource
from pacs_assets.nas.watch import NasUnavailable, NasWatch
from pacs_assets.pipeline.inventory import NasOutage, take_inventory


def main(spec: dict) -> dict:
    start = dt.date.fromisoformat(spec["start"])
    today = dt.date.fromisoformat(spec["today"])
    if spec["do"] == "watch":
        watch = NasWatch(Path(spec["state"]), Path(spec["root"]), partitions_start=start)
        try:
            tick = watch.tick(30, today)
        except NasUnavailable as exc:
            return {"outage": str(exc)}
        finally:
            watch.close()
        deleted = sorted(p for day in tick.changes.values() for p, token in day if token.startswith("deleted"))
        return {"not_read": tick.not_read, "deleted": deleted, "listed": tick.folders_listed}
    nas = DicomFolderNas(id=spec["nas_id"], kind="dicom_folder", root=spec["root"], partitions_start=start)
    source = DicomFolderSource(nas.id, nas.root, workers=1)
    try:
        result = take_inventory(source, nas, spec["index"], start, dt.date.fromisoformat(spec["end"]), today=today,
                                folders=spec.get("folders"))
    except (ConfigError, NasOutage) as exc:
        return {"outage": str(exc)}
    return {"walked": result.walked, "counts": result.counts, "not_read": result.not_read, "kept": result.kept}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
