"""The SkyPilot backend of waves: a candidate as a SkyPilot job on a pool of
clusters (or a managed job), its output streamed back, the pool torn down at the end.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

from .common import PLUGIN_ROOT, read_json, UserError, WAVE_DIR, write_atomic
from .candidates import log_path, running_path, worktree

SKY_TASK = os.path.join(PLUGIN_ROOT, "skypilot", "candidate.yaml")

SKY_IDLE_MINUTES = 10           # a pool cluster with no job for this long tears itself down


def sky_bin() -> str:
    found = shutil.which("sky")
    if not found:
        raise UserError("the sky command is not installed: pip install 'autoresearch[skypilot]' "
                            "(or pip install skypilot), then run `sky check` once")
    return found


def sky_state_path(root: str) -> str:
    return os.path.join(root, WAVE_DIR, "skypilot.json")


def sky_state(root: str) -> dict:
    return read_json(sky_state_path(root), default=None) or {"clusters": {}, "job_seconds": 0.0}


def sky_note(root: str, **changes) -> None:
    """Update the pool's record (clusters up since when, job time): under its own lock,
    since workers write it beside each other."""
    import fcntl
    os.makedirs(os.path.join(root, WAVE_DIR), exist_ok=True)
    with open(sky_state_path(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = sky_state(root)
        for cluster, info in changes.get("clusters", {}).items():
            state["clusters"].setdefault(cluster, info)
        state["job_seconds"] += changes.get("job_seconds", 0.0)
        write_atomic(sky_state_path(root), json.dumps(state, indent=1) + "\n")


def gpus_of(accelerators: str | None) -> float:
    """'H100:8' -> 8, 'A100' -> 1, none -> 0."""
    if not accelerators:
        return 0.0
    count = accelerators.split(":", 1)[1] if ":" in accelerators else "1"
    try:
        return float(count)
    except ValueError:
        return 1.0


def sky_submit_command(root: str, config: dict, cand: dict, worker: dict) -> list[str]:
    """The sky command line that submits one candidate (detached): `sky launch` the
    first time a pool cluster is used (its setup prepares the harness), `sky exec` on
    it after that, or `sky jobs launch` for managed jobs."""
    sky, opts = sky_bin(), config.get("skypilot") or {}
    envs = []
    for key, value in (("AUTORESEARCH_DATASET", config["dataset"]),
                       ("AUTORESEARCH_TIME_BUDGET", f"{config['budget']:g}"),
                       ("AUTORESEARCH_SEED", str(cand["seed"])),
                       ("AUTORESEARCH_TARGET", config["target"])):
        envs += ["--env", f"{key}={value}"]
    workdir = ["--workdir", worktree(root, cand["name"])]
    gpus = ["--gpus", opts["accelerators"]] if opts.get("accelerators") else []
    if opts.get("managed"):
        return [sky, "jobs", "launch", "-y", "-d", "-n", f"{config['tag']}-{cand['name']}",
                SKY_TASK, *workdir, *gpus, *envs]
    cluster = worker["cluster"]
    if cluster not in sky_state(root)["clusters"]:
        return [sky, "launch", "-y", "-d", "-c", cluster, SKY_TASK, *workdir, *gpus,
                "-i", str(SKY_IDLE_MINUTES), "--down", *envs]
    return [sky, "exec", cluster, SKY_TASK, "-d", *workdir, *envs]


def sky_job_id(output: str) -> str | None:
    """The job's id in what `sky launch/exec/jobs launch -d` printed."""
    found = re.findall(r"\bID:\s*(\d+)", output)
    return found[-1] if found else None


def sky_run(root: str, config: dict, cand: dict, worker: dict, timeout: float):
    """Submit the candidate as a SkyPilot job, stream its output into the candidate's
    log (`sky logs`, which the summary block comes back through), and read its final
    status. Past the timeout the job is cancelled. Returns (exit code, seconds, {})."""
    opts = config.get("skypilot") or {}
    sky, name, managed = sky_bin(), cand["name"], bool(opts.get("managed"))
    start = time.monotonic()
    submit = sky_submit_command(root, config, cand, worker)
    with open(log_path(root, name), "wb") as out:
        proc = subprocess.run(submit, cwd=root, capture_output=True, text=True, timeout=3600)
        job = sky_job_id(proc.stdout + proc.stderr)
        if proc.returncode != 0 or job is None:
            out.write(f"sky submit failed (exit {proc.returncode}): {' '.join(submit)}\n"
                      f"{proc.stdout}{proc.stderr}".encode())
            return 1, time.monotonic() - start, {}
        if not managed and submit[1] == "launch":
            sky_note(root, clusters={worker["cluster"]: {"up": time.time(),
                                                         "gpus": gpus_of(opts.get("accelerators"))}})
        logs = [sky, "jobs", "logs", job] if managed else [sky, "logs", worker["cluster"], job]
        follow = subprocess.Popen(logs, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        write_atomic(running_path(root, name), json.dumps({"pgid": follow.pid, "target": "sky",
                                                                "job": job}) + "\n")
        try:
            code = follow.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(follow.pid, signal.SIGKILL)
            follow.wait()
            cancel = [sky, "jobs", "cancel", "-y", job] if managed else \
                [sky, "cancel", "-y", worker["cluster"], job]
            subprocess.run(cancel, cwd=root, capture_output=True, timeout=600)
        if code is not None and not managed:
            status = subprocess.run([sky, "logs", "--status", worker["cluster"], job], cwd=root,
                                    capture_output=True, text=True, timeout=600)
            code = 0 if status.returncode == 0 else (status.returncode or 1)
    seconds = time.monotonic() - start
    sky_note(root, job_seconds=seconds * max(1.0, gpus_of(opts.get("accelerators"))))
    if os.path.exists(running_path(root, name)):
        os.unlink(running_path(root, name))
    return code, seconds, {}


def sky_teardown(root: str) -> list[str]:
    """Tear down the pool's clusters and say how many GPU-hours the session used."""
    state = sky_state(root)
    if not state["clusters"] and not state["job_seconds"]:
        return []
    lines, now, hours = [], time.time(), 0.0
    for cluster, info in state["clusters"].items():
        proc = subprocess.run([sky_bin(), "down", "-y", cluster], capture_output=True, text=True,
                              timeout=1800)
        hours += max(0.0, now - info.get("up", now)) / 3600 * max(1.0, info.get("gpus") or 1.0)
        lines.append(f"sky down {cluster}: " + ("done" if proc.returncode == 0 else
                                               f"failed (exit {proc.returncode}); run it by hand"))
    jobs = state["job_seconds"] / 3600
    lines.append(f"SkyPilot: {len(state['clusters'])} cluster(s) torn down; GPU-hours used: "
                 f"{max(hours, jobs):.2f} (jobs ran {jobs:.2f})")
    write_atomic(sky_state_path(root), json.dumps({"clusters": {}, "job_seconds": 0.0}) + "\n")
    return lines
