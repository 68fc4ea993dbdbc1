"""The machine: platform facts for the record, the GPUs and cores it offers, the
one Apple Silicon check, and the worker slots a session's runs go to.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from .common import UserError


def platform_info(python: str, framework: str | None) -> dict:
    """Where the runs happen, for the record: OS, device, memory, framework. Read
    without importing the framework (setup stays fast): nvidia-smi for NVIDIA GPUs,
    the CPU's name otherwise, the installed version of the framework the target
    imports (project.framework reads which from its text)."""
    import platform
    import shutil
    import subprocess
    info = {"os": f"{platform.system()} {platform.release()} {platform.machine()}"}
    gpus = ""
    if shutil.which("nvidia-smi"):
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip()
    if gpus:
        names = gpus.splitlines()
        info["device"] = f"cuda: {len(names)} x {names[0]}"
    elif apple_silicon():
        chip = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                              text=True).stdout.strip()
        info["device"] = f"mps/metal: {chip or 'Apple Silicon'}"
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), name)
        except OSError:
            pass
        info["device"] = f"cpu: {name} ({os.cpu_count()} cores)"
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if framework and os.path.exists(python):
        version = subprocess.run([python, "-c", "import importlib.metadata as m, sys; "
                                  "print(m.version(sys.argv[1]))", framework],
                                 capture_output=True, text=True).stdout.strip()
        info["framework"] = f"{framework} {version or '(version unknown)'}"
    return info


BACKENDS = ("local", "skypilot", "slurm")
REMOTE = ("skypilot", "slurm")    # backends whose runs happen elsewhere, not in this machine's slots

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def gpu_ids() -> list[str]:
    """The CUDA devices this machine offers: CUDA_VISIBLE_DEVICES if set, else nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [m.group(1) for m in re.finditer(r"^GPU (\d+):", out, re.M)]


def apple_silicon() -> bool:
    import platform
    return sys.platform == "darwin" and platform.machine() == "arm64"


def usable_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:          # macOS: no affinity; all cores
        return list(range(os.cpu_count() or 1))


def workers(config: dict) -> list[dict]:
    """The session's worker slots: {"slot", "name", "env", "cpus"?, "cluster"?}. One
    local worker with nothing set is exactly a single run as it always was."""
    n = int(config.get("workers") or 1)
    if config.get("backend") == "skypilot":
        sky = config.get("skypilot") or {}
        clusters = int(sky.get("clusters") or n)
        return [{"slot": i, "name": f"{sky.get('prefix', 'ar')}-{i % clusters}",
                 "cluster": f"{sky.get('prefix', 'ar')}-{i % clusters}", "env": {}} for i in range(n)]
    if config.get("backend") == "slurm":      # one job at a time each; Slurm picks the node
        return [{"slot": i, "name": f"slurm-{i}", "env": {}} for i in range(n)]
    if n == 1:
        return [{"slot": 0, "name": "local", "env": {}}]
    gpus = gpu_ids()
    if gpus:
        return [{"slot": i, "name": f"gpu{gpus[i % len(gpus)]}",
                 "env": {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}} for i in range(n)]
    if apple_silicon():
        return [{"slot": i, "name": f"mps{i}", "env": {}} for i in range(n)]
    cores = usable_cores()
    per = max(1, len(cores) // n)
    out = []
    for i in range(n):
        mine = cores[i * per:(i + 1) * per] or cores[-per:]
        label = f"cpu{mine[0]}" if len(mine) == 1 else f"cpu{mine[0]}-{mine[-1]}"
        out.append({"slot": i, "name": label, "cpus": mine,
                    "env": {v: str(len(mine)) for v in THREAD_VARS}})
    return out


def check_workers(n: int, backend: str) -> str | None:
    """Refuse a worker count the machine cannot give each worker a device for; a line
    for the person when the choice is allowed but worth knowing."""
    if n < 1:
        raise UserError("--workers must be 1 or more")
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}: use local, skypilot or slurm")
    if backend in REMOTE or n == 1:
        return None
    gpus = gpu_ids()
    if gpus and n > len(gpus):
        raise UserError(f"--workers {n} but this machine has {len(gpus)} GPU(s): one worker "
                            f"per GPU, so use --workers {len(gpus)} (or --backend skypilot)")
    if not gpus and apple_silicon():
        return (f"note: {n} workers share one Apple GPU and its unified memory: each run gets "
                "a share of it, so runs are slower and compare only with each other")
    cores = usable_cores()
    if not gpus and n > len(cores):
        raise UserError(f"--workers {n} but only {len(cores)} CPU cores: each worker needs "
                            f"its own cores, so use --workers {len(cores)} or fewer")
    return None


def main_tree_worker(config: dict) -> dict | None:
    """What a single run-experiment in the project root runs on in a wave session: the
    first worker's device and cores, so the baseline and re-measures are measured
    under the same conditions as the candidates. None: as always."""
    if config.get("backend") in REMOTE:
        where = {"skypilot": "SkyPilot", "slurm": "Slurm"}[config["backend"]]
        raise UserError(f"this session runs on {where}: run the baseline and re-measures "
                            "as candidates (new-candidate --unchanged --description baseline, "
                            "submit-wave, wait-wave)")
    if int(config.get("workers") or 1) == 1:
        return None
    return workers(config)[0]
