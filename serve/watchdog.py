"""Children die with the server: a watchdog process that kills tritonserver and its stubs when ``serve`` dies.

PyTriton starts tritonserver with ``PR_SET_PDEATHSIG = SIGTERM``, so a killed ``serve`` (SIGKILL, the OOM killer)
sends tritonserver into its graceful shutdown, which never ends while requests are in flight: their responses were
to come from the dead process. tritonserver and its Python-backend stubs then stay, holding the ports.

A signal handler cannot help (SIGKILL runs none), so the guard is a small child process, started in its own session
(Ctrl-C does not reach it) with a pipe from the server on its stdin. The server writes the pids to guard, each with
its start time (so a reused pid is never hit), and keeps the write end open. When the server dies, for whatever
reason, the kernel closes the pipe: the watchdog wakes at once (it blocks on the read, no polling), gathers the
guarded processes and all their descendants, and SIGKILLs them. An orderly stop writes ``disarm`` first, and the
watchdog exits without killing anything. Linux only (it reads ``/proc``); elsewhere :func:`start_watchdog` returns
None.

    python -m mmgen_edge.serve.watchdog      # reads "guard PID STARTTIME" / "disarm" lines on stdin
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state is [0], ppid [1], starttime [19])."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks after boot (None if it is gone): tells a process from a reused pid."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``."""
    out = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] != "Z" and int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def descendants(roots: Iterable[int]) -> list[int]:
    """``roots`` and every live process below them, parents before children."""
    by_parent: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] != "Z":
                by_parent.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    queue = list(roots)
    while queue:
        pid = queue.pop(0)
        if pid not in out:
            out.append(pid)
            queue.extend(by_parent.get(pid, []))
    return out


class Watchdog:
    """The server's side of a running watchdog: :meth:`guard` processes, :meth:`disarm` on an orderly stop."""

    def __init__(self, process: subprocess.Popen[bytes]):
        self.process = process

    def guard(self, pids: Iterable[int]) -> list[int]:
        """Have the watchdog kill ``pids`` (and their descendants) if this process dies. Returns those guarded."""
        guarded = []
        for pid in pids:
            started = start_time(pid)
            if started is not None:
                self._send(f"guard {pid} {started}")
                guarded.append(pid)
        return guarded

    def disarm(self) -> None:
        """An orderly stop: the watchdog exits without killing anything. Safe to call twice."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self._send("disarm")
            self.process.stdin.close()
        self.process.wait(timeout=10)

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n".encode())
        self.process.stdin.flush()


def start_watchdog() -> Watchdog | None:
    """Start the watchdog of this process (None where there is no ``/proc``: not Linux)."""
    if not (PROC / "self" / "stat").exists():
        return None
    process = subprocess.Popen(
        [sys.executable, "-m", "mmgen_edge.serve.watchdog", str(os.getpid())],
        stdin=subprocess.PIPE,
        start_new_session=True,  # terminal signals (Ctrl-C) go to the server, which stops in order, not here
    )
    return Watchdog(process)


def watch(parent: int, lines: Iterable[bytes]) -> int:
    """The watchdog's loop: record guarded pids until ``disarm`` or the end of input (the parent died).

    Args:
        parent: the server's pid (for the message).
        lines: the pipe from the server.

    Returns:
        How many processes it killed.
    """
    guarded: dict[int, int] = {}
    for raw in lines:
        words = raw.decode(errors="replace").split()
        if words == ["disarm"]:
            return 0
        if len(words) == 3 and words[0] == "guard":
            guarded[int(words[1])] = int(words[2])
    alive = [pid for pid, started in guarded.items() if start_time(pid) == started]
    victims = descendants(alive)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it exited on its own meanwhile: what we wanted
    if victims:
        print(f"mmgen-edge serve watchdog: server {parent} died; killed {len(victims)} processes it left", file=sys.stderr)
    return len(victims)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid(), sys.stdin.buffer)
