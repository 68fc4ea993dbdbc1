"""The machine-load monitor: what other work did to the machine while a run ran,
and whether that makes the run *disturbed* (never judged, never a sample).
"""
from __future__ import annotations

import os
import sys

from .common import finite

# A run that other work on the machine slowed down fits fewer steps into its budget
# and scores worse for reasons that have nothing to do with its code. On a 2-core
# CPU another process starting beside a 120 s run cut it from 45 steps to 28, a
# larger change than most real gains. run-experiment therefore reads the machine's
# counters before and after every run (nothing runs beside the training except, on
# a GPU machine, a poll of nvidia-smi every few seconds) and a run over a threshold
# is "disturbed": the recommendation becomes a rerun, and its sample never enters
# the noise estimate.
#
# The thresholds are shares of the machine's whole CPU capacity (cpus x seconds),
# measured on a 2-core VM shared with other VMs (research log 2026-11-24): a quiet
# run reads 0-2% for others and 0-8% for steal; a run with a one-core hog beside it
# reads about 45%.
DISTURBED_OTHERS = 0.10     # CPU time of processes other than the run
DISTURBED_STEAL = 0.15      # time the hypervisor gave to other machines (VM steal)
# Shorter runs are not judged: over a second or two the counters say more about a
# passing daemon than about the run (and a stand-in target that prints a number
# has nothing to disturb).
DISTURBED_MIN_SECONDS = 5.0
DISTURBED_BUSY = 3          # disturbed runs of one code before the advice changes
GPU_POLL_SECONDS = 5.0


def read_proc_stat(path: str = "/proc/stat", cpus: list[int] | None = None) -> dict | None:
    """The first line of /proc/stat in seconds: busy (user, nice, system, irq,
    softirq; guest time is already inside user), idle (idle, iowait) and steal.
    With `cpus`, the sum of those cores' own lines instead: a wave's worker pinned to
    some cores is disturbed by what runs there, not by its siblings on the others."""
    try:
        with open(path, encoding="ascii") as f:
            if cpus is None:
                rows = [f.readline().split()]
                if not rows[0] or rows[0][0] != "cpu":
                    return None
            else:
                names = {f"cpu{c}" for c in cpus}
                rows = [p for p in (line.split() for line in f) if p and p[0] in names]
                if len(rows) != len(names):
                    return None
        v = [0] * 8
        for parts in rows:
            for i, x in enumerate(parts[1:9]):
                v[i] += int(x)
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return {"busy": (user + nice + system + irq + softirq) / tick,
            "idle": (idle + iowait) / tick, "steal": steal / tick}


def parse_cputime(text: str) -> float | None:
    """ps's cumulative CPU time: '0:01.23', '12:03.45', '1:02:03', '2-03:04:05'."""
    try:
        days, _, rest = text.strip().rpartition("-")
        seconds = 0.0
        for part in rest.split(":"):
            seconds = seconds * 60 + float(part)
        return seconds + (int(days) * 86400 if days else 0)
    except ValueError:
        return None


def parse_ps_cputimes(text: str) -> dict:
    """`ps -A -o pid=,pgid=,time=` -> {pid: (pgid, cpu seconds)} (macOS has no /proc)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            pid, pgid = int(parts[0]), int(parts[1])
        except ValueError:
            continue
        seconds = parse_cputime(parts[2])
        if seconds is not None:
            out[pid] = (pgid, seconds)
    return out


def parse_gpu_pids(text: str) -> list[int]:
    """`nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`
    -> the pids using the GPU. Lines it cannot read ('[N/A]', 'No running processes
    found', a driver message) are skipped."""
    pids = []
    for line in text.splitlines():
        first = line.split(",")[0].strip()
        if first.isdigit():
            pids.append(int(first))
    return pids


class LoadMonitor:
    """What other work did to the machine while one run ran; see `disturbed`.

    Linux: others' CPU = all busy time in /proc/stat minus the run's own CPU time
    (its rusage, children included, once it has been waited for) minus this
    process's own. macOS: the growth of every other process's CPU time in `ps`.
    GPU (where nvidia-smi exists): processes outside the run's process group that
    hold the device, polled from a daemon thread. Every reading is best effort: a
    failure leaves a field out, never stops or slows the run.
    """

    def __init__(self, pgid: int, cpus: list[int] | None = None, siblings=None):
        # A wave's worker: `cpus` are the cores it is pinned to (only they are read);
        # `siblings()` gives the process groups of the other candidates running now,
        # which are not "other load" on a GPU.
        self.pgid, self.cpus, self.siblings = pgid, cpus, siblings
        self.gpu_others: set[int] = set()
        self.gpu_polls = 0
        self._thread = None

    @staticmethod
    def _own_cpu() -> float:
        import resource
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime

    def _ps(self) -> dict | None:
        if sys.platform != "darwin":
            return None
        import subprocess
        try:
            out = subprocess.run(["ps", "-A", "-o", "pid=,pgid=,time="], capture_output=True,
                                 text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return parse_ps_cputimes(out)

    def start(self) -> "LoadMonitor":
        import time
        try:
            self.t0 = time.monotonic()
            self.stat0 = read_proc_stat(cpus=self.cpus)
            self.self0, self.child0 = self._own_cpu()
            self.ps0 = None if self.stat0 else self._ps()
            import shutil
            if shutil.which("nvidia-smi"):
                import threading
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._poll_gpu, daemon=True)
                self._thread.start()
        except Exception:       # a reading must never stop the run
            self.t0 = None
        return self

    def _poll_gpu(self) -> None:
        import subprocess
        while not self._stop.wait(GPU_POLL_SECONDS if self.gpu_polls else 2.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                return
            self.gpu_polls += 1
            mine = {self.pgid} | (set(self.siblings()) if self.siblings else set())
            for pid in parse_gpu_pids(out):
                try:
                    if os.getpgid(pid) not in mine:
                        self.gpu_others.add(pid)
                except OSError:
                    # Not visible here (another PID namespace, or gone): it cannot be
                    # told apart from the run itself, so it is not counted.
                    pass

    def stop(self) -> dict:
        """Call after the run was waited for. Returns the reading (see `disturbed`)."""
        import time
        if self._thread:
            self._stop.set()
            self._thread.join(timeout=12)
        if getattr(self, "t0", None) is None:
            return {}
        try:
            wall = time.monotonic() - self.t0
            cpus = len(self.cpus) if self.cpus else (os.cpu_count() or 1)
            capacity = cpus * wall
            reading = {"seconds": round(wall, 1), "cpus": cpus}
            if capacity <= 0:
                return reading
            self1, child1 = self._own_cpu()
            ours = (self1 - self.self0) + (child1 - self.child0)
            stat1 = read_proc_stat(cpus=self.cpus) if self.stat0 else None
            if stat1:
                others = (stat1["busy"] - self.stat0["busy"]) - ours
                reading["others"] = round(max(0.0, others) / capacity, 3)
                reading["steal"] = round((stat1["steal"] - self.stat0["steal"]) / capacity, 3)
            elif self.ps0 is not None:
                ps1 = self._ps() or {}
                others = sum(sec - (self.ps0.get(pid, (0, 0.0))[1])
                             for pid, (pgid, sec) in ps1.items()
                             if pgid != self.pgid and pid != os.getpid())
                reading["others"] = round(max(0.0, others) / capacity, 3)
            if self.gpu_polls:
                reading["gpu_others"] = len(self.gpu_others)
            return reading
        except Exception:
            return {}


def load_checked(config: dict) -> bool:
    """Whether other load on the machine sets a run apart. Off for a session set up with
    --no-load-check (a shared machine, where every run has company), or for one call
    with AUTORESEARCH_LOAD_CHECK=0."""
    return config.get("load_check", True) and os.environ.get("AUTORESEARCH_LOAD_CHECK") != "0"


def disturbed(reading: dict | None, config: dict) -> str | None:
    """Why a run counts as disturbed (one short phrase), or None for a quiet one (or
    where the load is not checked)."""
    reading = reading or {}
    if not load_checked(config) \
            or not finite(reading.get("seconds")) or reading["seconds"] < DISTURBED_MIN_SECONDS:
        return None
    why = []
    if finite(reading.get("others")) and reading["others"] > DISTURBED_OTHERS:
        why.append(f"other processes used {reading['others']:.0%} of the CPUs")
    if finite(reading.get("steal")) and reading["steal"] > DISTURBED_STEAL:
        why.append(f"VM steal {reading['steal']:.0%}")
    if reading.get("gpu_others"):
        why.append(f"{reading['gpu_others']} other process(es) on the GPU")
    return "; ".join(why) or None
