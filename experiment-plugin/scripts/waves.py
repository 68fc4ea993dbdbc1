"""Waves: several candidates of one session run at once, on one backend.

A *candidate* is one idea: one commit on the kept state, made in its own git worktree
under .autoresearch/worktrees/<name>/ (new-candidate makes it, the agent edits the
target there, submit-wave commits it). A *wave* is up to W of them running at once
(setup-session --workers W). Results come back as they finish (wait-wave) and are
logged one by one (log-experiment --candidate NAME), under the log lock and by the
session's keep policy, exactly as a single run is.

When the kept state moved while a candidate ran (another candidate of its wave was
kept), the candidate is judged against the new kept state: if it beats that too it is
the better of the two and is kept in its place (the replaced change is re-based onto
it as a new candidate); if it only beat the state it was built on, it is re-based onto
the new kept state as a new candidate (`rebase`), because gains often combine. The
record of a re-based candidate names the one it came from (`rebased_from`), and every
candidate's record names the commit it was built on (`base`).

Under the noise-aware rule a keep is provisional in a wave too (lib.revert_due): a
discard built on the latest keep can undo it. A candidate still running on the undone
keep is never kept (its commit holds the undone change); if it beat the state it was
built on, its own change is re-based onto the kept state.

Backends, one interface (`run_candidate`):
  local     one worker per device: CUDA_VISIBLE_DEVICES set to one GPU each; on a CPU,
            disjoint core sets (sched_setaffinity) with the thread counts to match;
            on Apple Silicon one worker by default (unified memory is shared).
  skypilot  each candidate runs as a SkyPilot job of the task in
            experiment-plugin/skypilot/candidate.yaml, with the candidate's worktree as
            its workdir: `sky launch` once per cluster of the pool (its setup prepares
            the harness), `sky exec` after that, the output through `sky logs`; with
            --managed, `sky jobs launch`. Clusters stop themselves when idle and are
            torn down by end-session.

Workers are background processes (wave_worker.py, one per busy slot): each takes the
oldest queued candidate, runs it, writes its result, and takes the next, so a free
worker is refilled at once; it exits when nothing is queued. The agent never waits for
the slowest candidate of a wave.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import experiment_lib as lib  # noqa: E402

HERE = os.path.dirname(os.path.realpath(__file__))
BACKENDS = ("local", "skypilot")
SKY_TASK = os.path.join(lib.PLUGIN_ROOT, "skypilot", "candidate.yaml")
SKY_IDLE_MINUTES = 10           # a pool cluster with no job for this long tears itself down
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
WAIT_SECONDS = 540              # wait-wave returns before a 600 s Bash call would time out


# ------------------------------------------------------------------ candidates' state

def state_path(root: str, name: str) -> str:
    return os.path.join(root, lib.WAVE_DIR, f"{name}.json")


def worktree(root: str, name: str) -> str:
    return os.path.join(root, lib.WORKTREES, name)


def log_path(root: str, name: str) -> str:
    return os.path.join(root, lib.WAVE_DIR, f"{name}.log")


def running_path(root: str, name: str) -> str:
    return os.path.join(root, lib.WAVE_DIR, f"{name}.running")


def load(root: str, name: str) -> dict:
    cand = lib.read_json(state_path(root, name), default=None)
    if not cand:
        raise lib.UserError(f"no open candidate {name!r}: wait-wave --list shows the open ones")
    return cand


def save(root: str, cand: dict) -> None:
    os.makedirs(os.path.join(root, lib.WAVE_DIR), exist_ok=True)
    lib.write_atomic(state_path(root, cand["name"]), json.dumps(cand, indent=1) + "\n")


def forget(root: str, name: str) -> None:
    """A logged or dropped candidate: its worktree and state go; its log stays."""
    lib.remove_worktree(root, worktree(root, name))
    for path in (state_path(root, name), running_path(root, name)):
        if os.path.exists(path):
            os.unlink(path)


def next_name(root: str, runs: list[dict]) -> str:
    """c1, c2, ...: never a name used before in this session (the log keeps them)."""
    used = [r.get("candidate") for r in runs]
    for folder in (lib.WAVE_DIR, lib.WORKTREES):
        try:
            used += [n.split(".")[0] for n in os.listdir(os.path.join(root, folder))]
        except OSError:
            pass
    numbers = [int(n[1:]) for n in used if isinstance(n, str) and re.fullmatch(r"c\d+", n)]
    return f"c{max(numbers, default=0) + 1}"


def create(root: str, config: dict, runs: list[dict], description: str, base: str | None = None,
           unchanged: bool = False, rebased_from: str | None = None) -> dict:
    """A new candidate: its worktree at `base` (the kept state), waiting for its edit.
    Call with the log lock held."""
    name = next_name(root, runs)
    base = base or lib.last_kept_commit(config, runs)
    path = worktree(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lib.add_worktree(root, path, base)
    cand = {"name": name, "state": "prepared", "description": description, "base": base,
            "unchanged": unchanged, "created": lib.now_iso(), "samples": [], "seeds": [],
            "disturbed": []}
    if rebased_from:
        cand["rebased_from"] = rebased_from
    save(root, cand)
    return cand


def commit(root: str, config: dict, cand: dict) -> None:
    """Commit the candidate's edit in its worktree and queue it. The commit is kept
    reachable as refs/autoresearch/<tag>/cand-<name>, whatever happens to the worktree."""
    path, files = worktree(root, cand["name"]), lib.editable_files(config)
    stray = [f for f in lib.tracked_changes(path) if f not in files]
    if stray:
        raise lib.UserError(f"{cand['name']} changed {', '.join(stray[:3])}, outside the session's "
                            f"files ({', '.join(files)}): undo that in {path} (nothing was submitted)")
    head = lib.commit_target(path, files, f"candidate {cand['name']}: {cand['description']}")
    if head is None and not cand.get("unchanged"):
        raise lib.UserError(f"{cand['name']} has no change yet: edit {os.path.join(path, files[0])} "
                            "first, or drop it with new-candidate --drop "
                            f"{cand['name']} (nothing was submitted)")
    cand["commit"] = head or lib.head(path)
    cand["target_sha"] = lib.code_hash(path, config)
    lib.save_ref(root, config["tag"], f"cand-{cand['name']}", cand["commit"])
    cand.update(state="queued", queued=lib.now_iso())


def rebase(root: str, config: dict, runs: list[dict], old: str, new: str, onto: str,
           source: str, description: str) -> tuple[dict | None, str]:
    """Offer the change old..new again as a new candidate on `onto`, queued at once.
    Returns (the candidate or None, a line for the person)."""
    cand = create(root, config, runs, f"{description} (re-based from {source})", base=onto,
                  rebased_from=source)
    if not lib.apply_change(worktree(root, cand["name"]), old, new, lib.editable_files(config)):
        forget(root, cand["name"])
        return None, (f"{source} could not be re-based onto {onto[:7]} (its change conflicts "
                      "with the kept state): try the idea again by hand with new-candidate")
    try:
        commit(root, config, cand)
    except lib.UserError:           # the change is already in the kept state
        forget(root, cand["name"])
        return None, f"{source}'s change is already part of {onto[:7]}: nothing to re-base"
    save(root, cand)
    ensure_workers(root, config)
    return cand, f"re-based {source} onto {onto[:7]} as candidate {cand['name']} (queued)"


# ---------------------------------------------------------------------------- workers

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
        raise lib.UserError("--workers must be 1 or more")
    if backend not in BACKENDS:
        raise lib.UserError(f"unknown --backend {backend!r}: use local or skypilot")
    if backend == "skypilot" or n == 1:
        return None
    gpus = gpu_ids()
    if gpus and n > len(gpus):
        raise lib.UserError(f"--workers {n} but this machine has {len(gpus)} GPU(s): one worker "
                            f"per GPU, so use --workers {len(gpus)} (or --backend skypilot)")
    if not gpus and apple_silicon():
        return (f"note: {n} workers share one Apple GPU and its unified memory: each run gets "
                "a share of it, so runs are slower and compare only with each other")
    cores = usable_cores()
    if not gpus and n > len(cores):
        raise lib.UserError(f"--workers {n} but only {len(cores)} CPU cores: each worker needs "
                            f"its own cores, so use --workers {len(cores)} or fewer")
    return None


def main_tree_worker(config: dict) -> dict | None:
    """What a single run-experiment in the project root runs on in a wave session: the
    first worker's device and cores, so the baseline and re-measures are measured
    under the same conditions as the candidates. None: as always."""
    if config.get("backend") == "skypilot":
        raise lib.UserError("this session runs on SkyPilot: run the baseline and re-measures "
                            "as candidates (new-candidate --unchanged --description baseline, "
                            "submit-wave, wait-wave)")
    if int(config.get("workers") or 1) == 1:
        return None
    return workers(config)[0]


def worker_path(root: str, slot: int) -> str:
    return os.path.join(root, lib.WAVE_DIR, f"worker-{slot}.pid")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:        # a zombie (exited, not yet reaped) is not a worker
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def worker_pid(root: str, slot: int) -> int | None:
    try:
        with open(worker_path(root, slot), encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def ensure_workers(root: str, config: dict) -> list[str]:
    """Start a worker on every free slot while candidates wait. Call with the log lock
    held (a worker decides to exit under it, so no queued candidate is stranded)."""
    queued = [c for c in lib.candidates(root) if c.get("state") == "queued"]
    started = []
    for w in workers(config):
        if len(started) >= len(queued):
            break
        if worker_pid(root, w["slot"]):
            continue
        out = open(os.path.join(root, lib.WAVE_DIR, f"worker-{w['slot']}.log"), "ab")
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "wave_worker.py"),
                                 "--slot", str(w["slot"])], cwd=root, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "AUTORESEARCH_NO_REEXEC": "1"})
        out.close()
        lib.write_atomic(worker_path(root, w["slot"]), f"{proc.pid}\n")
        started.append(w["name"])
    return started


def lost_by_dead_workers(root: str, config: dict) -> list[str]:
    """Running candidates whose worker is gone (killed, or failed outright) become
    lost; their leftover runs are stopped. Call with the log lock held."""
    busy = {w["slot"] for w in workers(config) if worker_pid(root, w["slot"])}
    lost = []
    for c in lib.candidates(root):
        if c.get("state") == "running" and c.get("slot") not in busy:
            lib.stop_leftover_run(root, running_path(root, c["name"]))
            c["state"] = "lost"
            save(root, c)
            lost.append(c["name"])
    return lost


def sibling_groups(root: str, name: str) -> set[int]:
    """Process groups of the other candidates running now (not 'other load')."""
    out = set()
    for c in lib.candidates(root):
        info = lib.read_json(running_path(root, c["name"]), default=None) if c["name"] != name else None
        if info and isinstance(info.get("pgid"), int):
            out.add(info["pgid"])
    return out


# ---------------------------------------------------------------------------- one run

def run_candidate(root: str, config: dict, cand: dict, worker: dict) -> dict:
    """Run one candidate on one worker and return what its state gains: status,
    metrics, the sample (or the disturbance) with its seed, seconds, the load reading.
    The same checks as a single run: fixed-file hashes before and after, the timeout
    that kills the whole process group, crash / nan / timeout / checks_failed."""
    import run_experiment as rx
    name, path = cand["name"], worktree(root, cand["name"])
    timeout, seed = config["timeout"], cand["seed"]
    if lib.changed_fixed_files(path, config["fixed_files"]):
        return {"run_status": "tampered", "detail": "fixed files differ in its worktree",
                "finished": lib.now_iso()}
    if config.get("backend") == "skypilot":
        try:
            code, seconds, reading = sky_run(root, config, cand, worker, timeout)
        except (lib.UserError, OSError, subprocess.SubprocessError) as e:
            with open(log_path(root, name), "a", encoding="utf-8") as f:
                f.write(f"the SkyPilot job could not run: {e}\n")
            code, seconds, reading = 1, 0.0, {}
    else:
        code, seconds, reading = rx.run_target(
            root, config, timeout, seed, worker=worker, cwd=path, log_path=log_path(root, name),
            running=running_path(root, name), siblings=lambda: sibling_groups(root, name))
    with open(log_path(root, name), encoding="utf-8", errors="replace") as f:
        text = f.read()
    metrics = lib.parse_metrics(text)
    status, detail = rx.classify(code, text, metrics, config["metric"])
    if status == "ok" and config.get("checks"):
        status, detail, _ = rx.run_checks(path, config["checks"], timeout, status, detail, text)
    if lib.changed_fixed_files(path, config["fixed_files"]):
        status, detail = "tampered", "the run changed a fixed file"
    samples, seeds, disturbed = list(cand["samples"]), list(cand["seeds"]), list(cand["disturbed"])
    why = lib.disturbed(reading)
    if status == "ok":
        lib.add_sample(metrics[config["metric"]], seed, why, samples, seeds, disturbed)
    return {"run_status": status, "detail": detail, "metrics": lib.json_safe(metrics),
            "seconds": round(seconds, 1), "load": reading, "samples": samples, "seeds": seeds,
            "disturbed": disturbed, "disturbed_now": why if status == "ok" else None,
            "finished": lib.now_iso(), "timeout": timeout if code is None else None}


# --------------------------------------------------------------------------- SkyPilot

def sky_bin() -> str:
    found = shutil.which("sky")
    if not found:
        raise lib.UserError("the sky command is not installed: pip install 'autoresearch[skypilot]' "
                            "(or pip install skypilot), then run `sky check` once")
    return found


def sky_state_path(root: str) -> str:
    return os.path.join(root, lib.WAVE_DIR, "skypilot.json")


def sky_state(root: str) -> dict:
    return lib.read_json(sky_state_path(root), default=None) or {"clusters": {}, "job_seconds": 0.0}


def sky_note(root: str, **changes) -> None:
    """Update the pool's record (clusters up since when, job time): under its own lock,
    since workers write it beside each other."""
    import fcntl
    os.makedirs(os.path.join(root, lib.WAVE_DIR), exist_ok=True)
    with open(sky_state_path(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = sky_state(root)
        for cluster, info in changes.get("clusters", {}).items():
            state["clusters"].setdefault(cluster, info)
        state["job_seconds"] += changes.get("job_seconds", 0.0)
        lib.write_atomic(sky_state_path(root), json.dumps(state, indent=1) + "\n")


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
        lib.write_atomic(running_path(root, name), json.dumps({"pgid": follow.pid, "target": "sky",
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
    lib.write_atomic(sky_state_path(root), json.dumps({"clusters": {}, "job_seconds": 0.0}) + "\n")
    return lines


# ---------------------------------------------------------------------------- decide

def runs_at(runs: list[dict], base: str) -> list[dict]:
    """The log as it stood while `base` was the kept state (up to the next keep)."""
    last = max((i for i, r in enumerate(runs) if r["status"] == "keep" and lib.commit_of(r) == base),
               default=None)
    if last is None:
        return runs
    after = next((j for j in range(last + 1, len(runs))
                  if runs[j]["status"] == "keep" and lib.commit_of(runs[j]) != base), len(runs))
    return runs[:after]


def decide(config: dict, runs: list[dict], cand: dict) -> tuple[str, str]:
    """keep / discard / rerun / rebase / crash / checks_failed for a finished candidate,
    by the session's keep policy against the kept state as it is now."""
    status = cand.get("run_status")
    if status == "tampered":
        return "tampered", (f"{cand.get('detail')}: never recorded; drop it (new-candidate --drop "
                            f"{cand['name']}) and make the idea again without touching the harness")
    if status != "ok":
        return ("checks_failed" if status == "checks_failed" else "crash"), \
            f"status {status}" + (f" ({cand['detail']})" if cand.get("detail") else "")
    candidate = {"target_sha": cand["target_sha"], "samples": cand["samples"],
                 "metrics": cand.get("metrics") or {}, "disturbed_now": cand.get("disturbed_now")}
    if not candidate["samples"] and not candidate["disturbed_now"]:
        candidate["disturbed_now"] = "every run of it was disturbed"
    kept = lib.last_kept_commit(config, runs)
    if cand.get("unchanged") and cand["base"] != kept:
        return "discard", ("a re-measure of a kept state that has moved on since: its samples "
                           "stay in the log, nothing else to do")
    decision, reason = lib.recommend(config, runs, candidate)
    undone_runs = lib.undone_runs(runs)
    undone = next((r["run"] for r in runs if r["run"] in undone_runs
                   and lib.commit_of(r) == cand["base"]), None)
    if cand["base"] == kept or (decision == "rerun" and not undone):
        return decision, reason
    if decision == "keep" and not undone:
        return "keep", (f"{reason}; the kept state moved while it ran and it beats the new one "
                        "too: keeping it replaces that change, which is re-based onto it")
    then, why = lib.recommend(config, runs_at(runs, cand["base"]), candidate)
    if undone:
        # Its commit holds the change of a keep undone since: keeping it (or running it
        # again) would bring that change back. Its own change can be tried on the kept state.
        if then == "keep":
            return "rebase", (f"it beat the state it was built on ({why}), but that state was "
                              f"run {undone}'s keep, undone since: log it as discard and its "
                              "change is re-based onto the kept state as a new candidate")
        return "discard", f"{why}; it was built on run {undone}'s keep, undone since"
    if then == "keep":
        return "rebase", (f"it beat the state it was built on ({why}), not the kept state that "
                          f"moved since ({reason}): log it as discard and it is re-based onto "
                          "the new kept state as a new candidate")
    return decision, reason


# --------------------------------------------------------------------------- logging

def take_result(root: str, config: dict, name: str, status: str) -> dict:
    """The finished candidate to record, checked against the status asked for."""
    cand = load(root, name)
    if cand.get("state") not in ("done", "decided"):
        raise lib.UserError(f"{name} has not finished ({cand.get('state')}): wait-wave waits for "
                            "its result (nothing was recorded)")
    run_status = cand.get("run_status")
    if run_status == "tampered":
        raise lib.UserError(f"{name} ran with changed fixed files: drop it (new-candidate --drop "
                            f"{name}) and make it again; nothing was recorded")
    if status == "keep" and run_status != "ok":
        raise lib.UserError(f"{name} ended with status {run_status}: log it with --status "
                            f"{'checks_failed' if run_status == 'checks_failed' else 'crash'} "
                            "(nothing was recorded)")
    if status in ("crash", "checks_failed") and run_status == "ok":
        raise lib.UserError(f"{name} finished ok: log it as keep or discard (nothing was recorded)")
    return cand


def pending_of(cand: dict) -> dict:
    """A candidate's result in the shape of a single run's pending file."""
    return {k: cand[k] for k in ("run_status", "metrics", "seconds", "target_sha", "samples",
                                 "seeds", "disturbed", "recommendation") if cand.get(k) is not None}


def move_git(root: str, config: dict, runs: list[dict], cand: dict, status: str,
             number: int) -> tuple[str, str, list[str]]:
    """Git for a logged candidate (log lock held): keep moves the session branch to its
    commit; anything else keeps the commit as refs/autoresearch/<tag>/run-<n>. Winners
    that did not make it are re-based. Returns (commit, what moved, lines to print)."""
    commit, kept, tag = cand["commit"], lib.last_kept_commit(config, runs), config["tag"]
    lines, moved = [], ""
    if status == "keep" and commit != kept:
        dirty = lib.tracked_changes(root)
        if dirty:
            raise lib.UserError(f"uncommitted changes in {', '.join(dirty[:3])} in the project "
                                f"root: keeping {cand['name']} moves the branch; run resume-session "
                                "first (nothing was recorded)")
        if cand["base"] != kept:
            # It beat the kept state that moved under it: it replaces that change, and the
            # replaced change is offered again on top of it.
            old = next((r for r in reversed(runs) if r["status"] == "keep"), None)
            source = (old or {}).get("candidate") or f"run-{(old or {}).get('run', 0)}"
            ref = lib.save_ref(root, tag, f"replaced-{source}", kept)
            lib.reset_to(root, commit)
            _, line = rebase(root, config, runs, cand["base"], kept, commit, source,
                             (old or {}).get("description", "the replaced change"))
            lines.append(line)
            moved = f"; it replaces the kept {source} (saved as {ref})"
        else:
            lib.reset_to(root, commit)
        moved = f"; the branch moved to {commit[:7]} ({cand['name']})" + moved
    elif status != "keep" and commit != kept:
        ref = lib.save_ref(root, tag, f"run-{number}", commit)
        moved = f"; the tried change is kept at {ref}"
        if status == "discard" and cand.get("recommendation") == "rebase":
            _, line = rebase(root, config, runs, cand["base"], commit, kept, cand["name"],
                             cand["description"])
            lines.append(line)
    return commit, moved, lines


# ---------------------------------------------------------------------------- resume

def recover(root: str, config: dict) -> list[str]:
    """After an interruption in the middle of a wave (log lock held): stop runs whose
    worker is gone, and say which candidates finished, which were lost, and which can
    be re-queued. Candidates whose worker still runs are left alone."""
    lines = []
    busy = {w["slot"] for w in workers(config) if worker_pid(root, w["slot"])}
    for w in workers(config):
        if w["slot"] not in busy and os.path.exists(worker_path(root, w["slot"])):
            os.unlink(worker_path(root, w["slot"]))
    for c in lib.candidates(root):
        state, name = c.get("state"), c["name"]
        if state == "running" and c.get("slot") in busy:
            lines.append(f"wave: {name} is still running on {c.get('worker')}")
        elif state == "running":
            stopped = lib.stop_leftover_run(root, running_path(root, name))
            c["state"] = "lost"
            save(root, c)
            lines.append(f"wave: {name} was lost (its run on {c.get('worker')} was interrupted"
                         + ("; stopped what was left of it" if stopped else "") + "): "
                         "submit-wave re-queues it (same commit, a new seed)")
        elif state in ("done", "decided"):
            c["state"] = "done"         # judged again against the kept state as it is now
            save(root, c)
            value = (c.get("samples") or [None])[-1]
            result = (f"{config['metric']} {lib.fmt(value)}" if value is not None
                      else f"status {c.get('run_status')}")
            lines.append(f"wave: {name} finished, not logged ({result}): wait-wave shows it with "
                         f"its recommendation, then log-experiment --candidate {name}")
        elif state == "queued":
            lines.append(f"wave: {name} is queued: submit-wave starts it again")
        elif state == "lost":
            lines.append(f"wave: {name} was lost: submit-wave re-queues it")
        elif state == "prepared":
            lines.append(f"wave: {name} is prepared ({worktree(root, name)}): edit it, then submit-wave")
    return lines


def shutdown(root: str, config: dict) -> list[str]:
    """At the end of a session: stop the workers (their runs with them) and tear down a
    SkyPilot pool."""
    lines = []
    for w in workers(config):
        pid = worker_pid(root, w["slot"])
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
                lines.append(f"stopped worker {w['name']} (pid {pid})")
            except OSError:
                pass
    if config.get("backend") == "skypilot":
        lines += sky_teardown(root)
    return lines
