"""Which process runs a run, and whether that process is still alive: what lets the next run on this machine tell
a dead run from a slow one without a daemon (defs/executor.py), and what `pacs status` shows.

A run records, as run tags, its host name, its PID and a key no other process shares: the installation
(/etc/machine-id: two machines may share a host name), the boot, the PID namespace (a container next door may have
the same host name and the same PIDs) and the process's start time in clock ticks since boot (/proc/<pid>/stat,
field 22: a reused PID starts later). Only a run recorded on this installation and PID namespace is ever declared
dead: its process is gone, or the machine rebooted since. Any other run is "elsewhere", never guessed at. Without
/proc (not Linux) nothing is recorded and nothing is declared dead. No Dagster here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

HOST_TAG, PID_TAG, KEY_TAG = "pacs/host", "pacs/pid", "pacs/process_key"
ALIVE, DEAD, ELSEWHERE, UNKNOWN = "alive", "dead", "elsewhere", "unknown"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # Field 2 (the command name, in parentheses) may hold spaces: count fields after its closing parenthesis.
    return stat.rpartition(")")[2].split()[19]


def _machine() -> list[str] | None:
    """This machine's installation, boot and PID namespace; None where one of them cannot be read."""
    parts = [_read("/etc/machine-id"), _read("/proc/sys/kernel/random/boot_id")]
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        return None
    return parts if all(parts) else None


def tags_of_this_process() -> dict[str, str]:
    """The tags naming this process; empty where the system cannot tell its processes apart."""
    machine, start = _machine(), _start_ticks(os.getpid())
    if machine is None or start is None:
        return {}
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), KEY_TAG: "/".join([*machine, start])}


def process_state(tags: Mapping[str, str]) -> str:
    """ALIVE or DEAD for a process recorded on this machine; ELSEWHERE for one recorded on another host or in
    another container; UNKNOWN if no process was recorded."""
    host, pid, key = tags.get(HOST_TAG), tags.get(PID_TAG), tags.get(KEY_TAG, "")
    recorded, here = key.split("/"), _machine()
    if not (host and pid and pid.isdigit() and len(recorded) == 4):
        return UNKNOWN
    (install, boot, pid_ns, start) = recorded
    if here is None or host != socket.gethostname() or [install, pid_ns] != [here[0], here[2]]:
        return ELSEWHERE
    if boot != here[1]:
        return DEAD  # this machine rebooted since: that ended every process of the earlier boot
    return ALIVE if _start_ticks(int(pid)) == start else DEAD
