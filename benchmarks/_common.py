"""Helpers shared by the benchmarks: peak memory and CPU time of a whole process tree, plain tables.

Peak memory must include Ray's processes: a Ray job's memory lives mostly in its workers, raylet
and object store, not in the driver, so ``ru_maxrss`` of the driver alone would flatter it. The
sampler sums the proportional set size (PSS: shared pages such as the object store's are split
between the processes mapping them, so they are counted once) of a process and all its
descendants, several times a second, and keeps the largest sum. Linux only (it reads /proc).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Measured", "PeakMemory", "format_table", "mb", "print_table", "run_measured", "tree_memory"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: ppid is the 2nd field after the last ')'
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(root: int) -> list[int]:
    children = _children_map()
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def _process_memory(pid: int) -> int:
    """PSS in bytes (RSS where smaps_rollup is unavailable); 0 for a process that is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return 0


def _process_cpu(pid: int) -> tuple[str, float] | None:
    """(command name, CPU seconds used so far: user + system), or None for a process that is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    name = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
    fields = stat[stat.rindex(b")") + 2 :].split()
    return name, (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def tree_memory(root: int) -> int:
    """Memory of ``root`` and all its descendants now, in bytes."""
    return sum(_process_memory(pid) for pid in _descendants(root))


class PeakMemory:
    """Samples a process tree in a background thread: peak memory and CPU seconds used.

    ``peak`` is the largest sum of :func:`tree_memory`; ``cpu_s`` the CPU seconds (user + system) of
    every process seen in the tree (each process's last sample, so a process that exits between
    two samples loses at most one interval), and ``cpu_by_name`` the same split by command name, to
    see what Ray's own processes cost next to the work. CPU seconds do not depend on how busy the
    machine is, unlike wall time, so they compare two runs fairly on a shared machine.
    Use as a context manager around the work: ``with PeakMemory(pid) as mem: ...; mem.peak``.
    """

    def __init__(self, pid: int | None = None, interval_s: float = 0.5) -> None:
        self.pid = pid or os.getpid()
        self.interval_s = interval_s
        self.peak = 0
        self.samples = 0
        self._cpu: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        pids = _descendants(self.pid)
        self.peak = max(self.peak, sum(_process_memory(pid) for pid in pids))
        for pid in pids:
            cpu = _process_cpu(pid)
            if cpu is not None:
                self._cpu[pid] = cpu
        self.samples += 1

    @property
    def cpu_s(self) -> float:
        return sum(c for _, c in self._cpu.values())

    @property
    def cpu_by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, c in self._cpu.values():
            out[name] = out.get(name, 0.0) + c
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_bytes: int
    cpu_s: float
    cpu_by_name: dict[str, float]


def run_measured(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout_s: float | None = None,
) -> Measured:
    """Run a command in its own process group, measuring its wall time and its tree's peak memory."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )
    with PeakMemory(proc.pid) as mem:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
    return Measured(
        proc.returncode, out, err, time.perf_counter() - started, mem.peak, mem.cpu_s, mem.cpu_by_name
    )


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> str:
    """A plain-text table (no colours, so it reads the same in a log file as on a terminal)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    out = [title] if title else []
    out += [line(cells[0]), rule, *(line(r) for r in cells[1:])]
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> None:
    sys.stdout.write(format_table(headers, rows, title) + "\n")
    sys.stdout.flush()
