"""Progress of a long step in the run's log: 'done / total, rate, ETA' at a steady interval (the walk, the
upload and the reconciliation use it)."""

import time

from dagster import AssetExecutionContext

PROGRESS_EVERY_SECONDS = 15.0


class Progress:
    """Logs 'done / total, rate, ETA' at a steady interval during long steps."""

    def __init__(self, context: AssetExecutionContext, what: str, total: int | None = None):
        self.context, self.what, self.total = context, what, total
        self.started = self.last = time.monotonic()

    def tick(self, done: int, total: int | None = None, force: bool = False) -> None:
        now = time.monotonic()
        self.total = total or self.total
        if not force and now - self.last < PROGRESS_EVERY_SECONDS:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        if self.total:
            eta = (self.total - done) / rate if rate else float("inf")
            self.context.log.info(f"{self.what}: {done}/{self.total} ({rate:.0f}/s, ETA {eta:.0f} s)")
        else:
            self.context.log.info(f"{self.what}: {done} ({rate:.0f}/s)")
