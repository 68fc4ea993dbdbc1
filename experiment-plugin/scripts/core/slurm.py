"""The Slurm backend of waves: each candidate one `sbatch` job, followed with squeue
(sacct once the controller has forgotten it), its output file read back.

What it assumes is what a cluster with a login node gives: one filesystem on the
login node and the compute nodes, so the project, its worktrees, the interpreter and
the data cache are at the same paths on both, and the Slurm client commands (sbatch,
squeue, scancel) where the scripts run. A job runs the candidate's worktree as a local
run would (the same command, the same AUTORESEARCH_* variables) but without the run's
sandbox: the cluster's own isolation is what it gets, and the metric is read from what
it prints.

A job belongs to the session, not to the worker that follows it: when a worker dies
(the agent's machine, a kill) the job goes on, and the next worker on that slot finds
it again (by the job id in the candidate's running file, else by its job name) rather
than submitting a second one. A job the cluster failed (its node went down, it was
preempted) is submitted again, up to MAX_JOBS; anything else that ends it is the run's
result, with Slurm's word for why.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import time

from .common import read_json, UserError, write_atomic
from .devices import THREAD_VARS
from .project import run_vars
from .candidates import log_path, running_path, worktree

POLL_SECONDS = 1.0          # how often a worker asks squeue about its job (one light RPC each)
CALL_TIMEOUT = 60           # a Slurm command slower than this: the controller is unreachable
SLACK_MINUTES = 2           # Slurm's own time limit: the session's timeout plus this, a backstop
MAX_JOBS = 3                # jobs one run may use before the cluster's failures count as its crash
CANCEL_WAIT = 30            # end-session waits this long for cancelled jobs to leave the queue

# Job states (squeue %T, sacct State). Active ones are followed; AGAIN are the
# cluster's failures, not the run's: the candidate gets a new job.
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
          "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
AGAIN = {"NODE_FAIL", "BOOT_FAIL", "PREEMPTED"}
UNREACHABLE = "UNREACHABLE"     # the controller did not answer: the job is not gone, ask again
WHY = {"CANCELLED": "it was cancelled (scancel, or an administrator)",
       "OUT_OF_MEMORY": "it ran out of memory on its node",
       "DEADLINE": "it reached its deadline",
       "NODE_FAIL": "its node failed", "BOOT_FAIL": "its node failed to boot",
       "PREEMPTED": "it was preempted"}


def slurm_bin(name: str = "sbatch") -> str:
    found = shutil.which(name)
    if not found:
        raise UserError(f"the Slurm command {name} is not on PATH: run the session on the "
                        "cluster's login node (where sbatch, squeue and scancel are), or use "
                        "--backend local")
    return found


def call(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([slurm_bin(argv[0]), *argv[1:]], capture_output=True, text=True,
                          timeout=CALL_TIMEOUT, env=env, stdin=subprocess.DEVNULL)


def job_prefix(root: str, tag: str) -> str:
    """ar-<tag>-<6 hex of the project's path>: a job's name says whose it is, and two
    projects with the same tag never cancel each other's jobs."""
    digest = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:6]
    return f"ar-{re.sub(r'[^A-Za-z0-9-]', '-', tag)[:30]}-{digest}"


def job_name(config: dict, cand: dict) -> str:
    return f"{config['slurm']['prefix']}-{cand['name']}"


def submit_command(root: str, config: dict, cand: dict) -> tuple[list[str], dict]:
    """The sbatch command line for one candidate, and the environment it passes on
    (sbatch exports the caller's environment to the job)."""
    opts = config.get("slurm") or {}
    command = config["run"] if config.get("run") else shlex.join([config["python"], config["target"]])
    minutes = math.ceil(config["timeout"] / 60) + SLACK_MINUTES
    argv = [slurm_bin("sbatch"), "--parsable", "--job-name", job_name(config, cand),
            "--chdir", worktree(root, cand["name"]), "--output", log_path(root, cand["name"]),
            # a failed node is the backend's to handle (a new job, at once), not Slurm's
            # requeue, which holds the job back for minutes and appends to its output
            "--no-requeue", "--time", str(minutes)]
    for flag, key in (("--cpus-per-task", "cpus_per_task"), ("--gres", "gres"),
                      ("--partition", "partition")):
        if opts.get(key):
            argv += [flag, str(opts[key])]
    env = {**os.environ, **run_vars(config, cand["seed"])}
    if opts.get("cpus_per_task"):
        env.update({v: str(opts["cpus_per_task"]) for v in THREAD_VARS})
    return argv + ["--wrap", command], env


def elapsed_seconds(text: str) -> float | None:
    """squeue's %M ('5', '1:02', '1:02:03', '2-01:02:03') in seconds."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(?:(\d+):)?(\d+)", text.strip())
    if not m:
        return None
    days, a, b, s = (int(g) if g else 0 for g in m.groups())
    hours, minutes = (a, b) if m.group(3) else (0, a)
    return days * 86400 + hours * 3600 + minutes * 60 + s


def job_state(job: str) -> dict | None:
    """{state, reason, node, elapsed} of a job from squeue (which keeps finished jobs
    for the controller's MinJobAge), else from sacct; None when neither knows it. A
    controller that does not answer (restarting, overloaded) is state UNREACHABLE: a
    job it cannot be asked about is not a job that ended."""
    try:
        proc = call("squeue", "-h", "-j", job, "-t", "all", "-o", "%T|%r|%N|%M")
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess([], 1, "", "timed out")
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
        return {"state": UNREACHABLE, "reason": proc.stderr.strip()[-200:], "node": "", "elapsed": None}
    line = proc.stdout.strip().splitlines()[-1:] if proc.returncode == 0 else []
    if line and line[0].count("|") == 3:
        state, reason, node, used = line[0].split("|")
        return {"state": state, "reason": reason, "node": node, "elapsed": elapsed_seconds(used)}
    acct = call("sacct", "-n", "-X", "-P", "-j", job, "-o", "State,NodeList,ElapsedRaw")
    rows = [r.split("|") for r in acct.stdout.strip().splitlines() if r.count("|") == 2]
    if acct.returncode == 0 and rows:
        state, node, used = rows[-1]
        return {"state": state.split()[0], "reason": "", "node": node,
                "elapsed": float(used) if used.isdigit() else None}
    return None


def exit_code(job: str) -> int | None:
    """The job's exit status (ExitCode N:signal): scontrol while the controller holds
    the job, else sacct."""
    proc = call("scontrol", "show", "job", "-o", job)
    m = re.search(r"\bExitCode=(\d+):(\d+)", proc.stdout)
    if not m:
        acct = call("sacct", "-n", "-X", "-P", "-j", job, "-o", "ExitCode")
        m = re.match(r"(\d+):(\d+)", acct.stdout.strip())
    if not m:
        return None
    code, sig = int(m.group(1)), int(m.group(2))
    return code if code or not sig else 128 + sig


def active_job(config: dict, cand: dict) -> str | None:
    """A job of this candidate still in the queue, found by its name (a worker that
    died between sbatch and writing the job's id down)."""
    proc = call("squeue", "-h", "--me", "-n", job_name(config, cand), "-o", "%i")
    jobs = proc.stdout.split() if proc.returncode == 0 else []
    return jobs[-1] if jobs else None


def job_of(root: str, name: str) -> str | None:
    """The Slurm job a candidate's run is (or was last), from its running file."""
    info = read_json(running_path(root, name), default=None)
    return str(info["job"]) if isinstance(info, dict) and info.get("backend") == "slurm" else None


def describe(job: str) -> str:
    """'RUNNING on n1', 'PENDING (Resources)', 'COMPLETED', or 'unknown to Slurm'."""
    try:
        st = job_state(job)
    except (UserError, OSError, subprocess.SubprocessError):
        st = None
    if not st:
        return "unknown to Slurm"
    if st["state"] == UNREACHABLE:
        return "the controller did not answer"
    if st["state"] == "PENDING":
        return f"PENDING ({st['reason']})"
    return st["state"] + (f" on {st['node']}" if st["node"] else "")


def submit(root: str, config: dict, cand: dict) -> str:
    argv, env = submit_command(root, config, cand)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CALL_TIMEOUT, env=env,
                          stdin=subprocess.DEVNULL)
    job = proc.stdout.strip().split(";")[0]
    if proc.returncode != 0 or not job.isdigit():
        raise UserError(f"sbatch failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return job


def follow(job: str, timeout: float) -> tuple[dict | None, bool]:
    """Poll the job until it ends; cancel it once it has run past `timeout` seconds
    (Slurm's own clock, so a worker that took the job over counts from its real start).
    Returns (its last state or None when Slurm no longer knows it, timed out)."""
    timed_out = False
    while True:
        st = job_state(job)
        if st is not None and st["state"] == UNREACHABLE:
            time.sleep(POLL_SECONDS)
            continue
        if st is None or st["state"] not in ACTIVE:
            return st, timed_out
        if not timed_out and st["state"] == "RUNNING" and (st["elapsed"] or 0) > timeout:
            call("scancel", job)
            timed_out = True
        time.sleep(POLL_SECONDS)


def slurm_run(root: str, config: dict, cand: dict, worker: dict, timeout: float):
    """Run the candidate as a Slurm job (or take over the one it already has) and wait
    for it. Returns (exit code or None on timeout, seconds it ran, the cause when
    Slurm ended it, what the candidate keeps of it: its jobs and node)."""
    name, running = cand["name"], running_path(root, cand["name"])
    job = job_of(root, name) or active_job(config, cand)
    jobs, notes, submitted = [], [], None
    while True:
        if job is None:
            job, submitted = submit(root, config, cand), time.time()
        jobs.append(job)
        write_atomic(running, json.dumps({"backend": "slurm", "job": job, "name": job_name(config, cand),
                                          "submitted": submitted}) + "\n")
        st, timed_out = follow(job, timeout)
        state = st["state"] if st else "UNKNOWN"
        if (state in AGAIN or st is None) and len(jobs) < MAX_JOBS:
            why = WHY.get(state, "Slurm no longer knows it")
            notes.append(f"slurm: job {job} ended {state} ({why}); submitted again")
            job = None
            continue
        break
    info = {"jobs": jobs, "job": job, "node": (st or {}).get("node") or None, "state": state,
            "submitted": submitted, "ended": time.time()}   # epoch seconds: the engine's overhead
    seconds = (st or {}).get("elapsed") or 0.0
    cause, code = None, None
    if timed_out or state == "TIMEOUT":
        code = None
    elif state == "COMPLETED":
        code = exit_code(job) or 0
    elif state == "FAILED":
        code = exit_code(job) or 1
    else:
        code = 1
        cause = f"Slurm job {job} ended {state}: " + WHY.get(state, "Slurm no longer knows it") + (
            f" ({len(jobs)} jobs in a row)" if state in AGAIN or st is None else "")
        notes.append(f"slurm: {cause}")
    if notes:
        with open(log_path(root, name), "a", encoding="utf-8") as f:
            f.write("\n".join(notes) + "\n")
    # The running file stays until the next run of this candidate starts (waves.take_next):
    # a worker that dies before its result is saved leaves the job to be read again,
    # never run again.
    return code, float(seconds), cause, info


def session_jobs(prefix: str) -> list[str]:
    """This user's jobs still in the queue whose name is the session's."""
    proc = call("squeue", "-h", "--me", "-o", "%i|%j")
    return [i for i, _, n in (l.partition("|") for l in proc.stdout.splitlines())
            if n.startswith(prefix + "-")] if proc.returncode == 0 else []


def slurm_cancel_all(config: dict) -> list[str]:
    """Cancel every job of the session still queued or running, and wait until the
    queue has let them go."""
    prefix = (config.get("slurm") or {}).get("prefix")
    if not prefix or not shutil.which("squeue"):
        return []
    jobs = session_jobs(prefix)
    if not jobs:
        return []
    call("scancel", *jobs)
    deadline = time.monotonic() + CANCEL_WAIT
    while session_jobs(prefix) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    left = session_jobs(prefix)
    return [f"Slurm: cancelled {len(jobs)} job(s) of the session ({', '.join(jobs)})" +
            (f"; still leaving the queue: {', '.join(left)} (squeue --me)" if left else "")]
