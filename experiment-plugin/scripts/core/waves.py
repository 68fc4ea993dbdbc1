"""Waves: several candidates of one session run at once, on one backend.

A *candidate* is one idea: one commit on the kept state, made in its own git worktree
under .autoresearch/worktrees/<name>/ (new-candidate makes it, the agent edits the
target there, submit-wave commits it). A *wave* is up to W of them running at once
(setup-session --workers W). Results come back as they finish (wait-wave) and are
logged one by one (log-experiment --candidate NAME), under the log lock and by the
session's keep policy (`policy.decide_candidate`), exactly as a single run is.

Backends, one interface (`run_candidate`): local workers, one per device (see
`devices.workers`), SkyPilot jobs (see `skypilot`) or Slurm jobs (see `slurm`: a
job outlives its worker, and the next worker on its slot follows it). Workers are background
processes (scripts/wave_worker.py, one per busy slot): each takes the oldest queued
candidate, runs it, writes its result, and takes the next, so a free worker is
refilled at once; it exits when nothing is queued.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from .common import (editable_files, fmt, now_iso, read_json, SCRIPTS_DIR, UserError, WAVE_DIR,
    write_atomic)
from .git import apply_change, last_kept_commit, reset_to, save_ref, tracked_changes
from .harness import changed_fixed_files
from .parsing import json_safe
from .monitor import disturbed
from .devices import workers
from .stats import add_sample, next_seed
from .candidates import (candidates, commit, create, forget, load, log_path, running_path,
    save, worktree)
from .measure import cache_changed
from .runner import run_checks, run_target, stop_leftover_run, verdict
from .skypilot import sky_run, sky_teardown
from .slurm import (ACTIVE, describe, job_of, job_state, slurm_cancel_all, slurm_run,
    UNREACHABLE)

WAIT_SECONDS = 540              # wait-wave returns before a 600 s Bash call would time out


def rebase(root: str, config: dict, runs: list[dict], old: str, new: str, onto: str,
           source: str, description: str) -> tuple[dict | None, str]:
    """Offer the change old..new again as a new candidate on `onto`, queued at once.
    Returns (the candidate or None, a line for the person)."""
    cand = create(root, config, runs, f"{description} (re-based from {source})", base=onto,
                  rebased_from=source)
    if not apply_change(worktree(root, cand["name"]), old, new, editable_files(config)):
        forget(root, cand["name"])
        return None, (f"{source} could not be re-based onto {onto[:7]} (its change conflicts "
                      "with the kept state): try the idea again by hand with new-candidate")
    try:
        commit(root, config, cand)
    except UserError:           # the change is already in the kept state
        forget(root, cand["name"])
        return None, f"{source}'s change is already part of {onto[:7]}: nothing to re-base"
    save(root, cand)
    ensure_workers(root, config)
    return cand, f"re-based {source} onto {onto[:7]} as candidate {cand['name']} (queued)"


def worker_path(root: str, slot: int) -> str:
    return os.path.join(root, WAVE_DIR, f"worker-{slot}.pid")


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


def orphaned_slots(root: str, config: dict) -> set[int]:
    """Slots of Slurm candidates whose worker is gone: their job goes on in the
    cluster's queue, and wants a worker to follow it again."""
    if config.get("backend") != "slurm":
        return set()
    return {c.get("slot") for c in candidates(root)
            if c.get("state") == "running" and not worker_pid(root, c.get("slot", -1))}


def ensure_workers(root: str, config: dict) -> list[str]:
    """Start a worker on every free slot while candidates wait (and on the slot of a
    Slurm job no worker follows). Call with the log lock held (a worker decides to exit
    under it, so no queued candidate is stranded)."""
    waiting = len([c for c in candidates(root) if c.get("state") == "queued"])
    orphaned = orphaned_slots(root, config)
    started = []
    for w in workers(config):
        if worker_pid(root, w["slot"]):
            continue
        if w["slot"] not in orphaned:
            if waiting <= 0:
                continue
            waiting -= 1
        out = open(os.path.join(root, WAVE_DIR, f"worker-{w['slot']}.log"), "ab")
        proc = subprocess.Popen([sys.executable, os.path.join(SCRIPTS_DIR, "wave_worker.py"),
                                 "--slot", str(w["slot"])], cwd=root, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "AUTORESEARCH_NO_REEXEC": "1"})
        out.close()
        write_atomic(worker_path(root, w["slot"]), f"{proc.pid}\n")
        started.append(w["name"])
    return started


def take_next(root: str, config: dict, slot: int, runs: list[dict]) -> dict | None:
    """What the worker on `slot` runs next (log lock held): a Slurm candidate of its
    slot whose worker died (its job is followed again, on the same seed), else the
    oldest queued candidate, marked running on this worker. None: nothing to do."""
    cands = candidates(root)
    if config.get("backend") == "slurm":
        mine = [c for c in cands if c.get("state") == "running" and c.get("slot") == slot]
        if mine:
            return mine[0]
    queued = [c for c in cands if c.get("state") == "queued"]
    if not queued:
        return None
    cand, worker = queued[0], workers(config)[slot]
    if os.path.exists(running_path(root, cand["name"])):
        os.unlink(running_path(root, cand["name"]))     # an earlier run's, done with
    cand.update(state="running", worker=worker["name"], slot=slot,
                backend=config.get("backend", "local"), started=now_iso(),
                seed=next_seed(runs, cand["target_sha"], cand))
    save(root, cand)
    return cand


def lost_by_dead_workers(root: str, config: dict) -> list[str]:
    """Running candidates whose worker is gone (killed, or failed outright) become
    lost; their leftover runs are stopped. Call with the log lock held. On Slurm none
    is lost: its job outlives the worker (see ensure_workers)."""
    if config.get("backend") == "slurm":
        return []
    busy = {w["slot"] for w in workers(config) if worker_pid(root, w["slot"])}
    lost = []
    for c in candidates(root):
        if c.get("state") == "running" and c.get("slot") not in busy:
            stop_leftover_run(root, running_path(root, c["name"]))
            c["state"] = "lost"
            save(root, c)
            lost.append(c["name"])
    return lost


def sibling_groups(root: str, name: str) -> set[int]:
    """Process groups of the other candidates running now (not 'other load')."""
    out = set()
    for c in candidates(root):
        info = read_json(running_path(root, c["name"]), default=None) if c["name"] != name else None
        if info and isinstance(info.get("pgid"), int):
            out.add(info["pgid"])
    return out


def run_candidate(root: str, config: dict, cand: dict, worker: dict) -> dict:
    """Run one candidate on one worker and return what its state gains: status,
    metrics, the sample (or the disturbance) with its seed, seconds, the load reading.
    The same checks as a single run: fixed-file hashes before and after, the timeout
    that kills the whole process group, crash / nan / timeout / checks_failed."""
    name, path = cand["name"], worktree(root, cand["name"])
    timeout, seed = config["timeout"], cand["seed"]
    if changed_fixed_files(path, config["fixed_files"]) or cache_changed(config):
        return {"run_status": "tampered", "detail": "fixed files differ in its worktree",
                "finished": now_iso()}
    results, cause, engine = [], None, None
    if config.get("backend") == "slurm":
        config = {**config, "measure": "output"}    # the channel does not cross machines
        try:
            code, seconds, cause, engine = slurm_run(root, config, cand, worker, timeout)
        except (UserError, OSError, subprocess.SubprocessError) as e:
            cause = f"the Slurm job could not run: {e}"
            with open(log_path(root, name), "a", encoding="utf-8") as f:
                f.write(cause + "\n")
            code, seconds = 1, 0.0
        reading = {}
    elif config.get("backend") == "skypilot":
        config = {**config, "measure": "output"}    # the channel does not cross machines
        try:
            code, seconds, reading = sky_run(root, config, cand, worker, timeout)
        except (UserError, OSError, subprocess.SubprocessError) as e:
            with open(log_path(root, name), "a", encoding="utf-8") as f:
                f.write(f"the SkyPilot job could not run: {e}\n")
            code, seconds, reading = 1, 0.0, {}
    else:
        code, seconds, reading = run_target(
            root, config, timeout, seed, worker=worker, cwd=path, log_path=log_path(root, name),
            running=running_path(root, name), siblings=lambda: sibling_groups(root, name),
            results=results)
    with open(log_path(root, name), encoding="utf-8", errors="replace") as f:
        text = f.read()
    status, detail, metrics = verdict(config, code, text, results, root=root)
    if cause and status != "ok":
        detail = cause                  # the engine's word for why, not just "exit 1"
    if status == "ok" and config.get("checks"):
        status, detail, _ = run_checks(path, config["checks"], timeout, status, detail, text)
    if changed_fixed_files(path, config["fixed_files"]) or cache_changed(config):
        status, detail = "tampered", "the run changed a fixed file"
    samples, seeds, set_apart = list(cand["samples"]), list(cand["seeds"]), list(cand["disturbed"])
    why = disturbed(reading, config)
    if status == "ok":
        add_sample(metrics[config["metric"]], seed, why, samples, seeds, set_apart)
    return {"run_status": status, "detail": detail, "metrics": json_safe(metrics),
            "seconds": round(seconds, 1), "load": reading, "samples": samples, "seeds": seeds,
            "disturbed": set_apart, "disturbed_now": why if status == "ok" else None,
            "finished": now_iso(), "timeout": timeout if code is None else None,
            **({"slurm": engine} if engine else {})}


def take_result(root: str, config: dict, name: str, status: str) -> dict:
    """The finished candidate to record, checked against the status asked for."""
    cand = load(root, name)
    if cand.get("state") not in ("done", "decided"):
        raise UserError(f"{name} has not finished ({cand.get('state')}): wait-wave waits for "
                            "its result (nothing was recorded)")
    run_status = cand.get("run_status")
    if run_status == "tampered":
        raise UserError(f"{name} ran with changed fixed files: drop it (new-candidate --drop "
                            f"{name}) and make it again; nothing was recorded")
    if status == "keep" and run_status != "ok":
        raise UserError(f"{name} ended with status {run_status}: log it with --status "
                            f"{'checks_failed' if run_status == 'checks_failed' else 'crash'} "
                            "(nothing was recorded)")
    if status in ("crash", "checks_failed") and run_status == "ok":
        raise UserError(f"{name} finished ok: log it as keep or discard (nothing was recorded)")
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
    commit, kept, tag = cand["commit"], last_kept_commit(config, runs), config["tag"]
    lines, moved = [], ""
    if status == "keep" and commit != kept:
        dirty = tracked_changes(root)
        if dirty:
            raise UserError(f"uncommitted changes in {', '.join(dirty[:3])} in the project "
                                f"root: keeping {cand['name']} moves the branch; run resume-session "
                                "first (nothing was recorded)")
        if cand["base"] != kept:
            # It beat the kept state that moved under it: it replaces that change, and the
            # replaced change is offered again on top of it.
            old = next((r for r in reversed(runs) if r["status"] == "keep"), None)
            source = (old or {}).get("candidate") or f"run-{(old or {}).get('run', 0)}"
            ref = save_ref(root, tag, f"replaced-{source}", kept)
            reset_to(root, commit)
            _, line = rebase(root, config, runs, cand["base"], kept, commit, source,
                             (old or {}).get("description", "the replaced change"))
            lines.append(line)
            moved = f"; it replaces the kept {source} (saved as {ref})"
        else:
            reset_to(root, commit)
        moved = f"; the branch moved to {commit[:7]} ({cand['name']})" + moved
    elif status != "keep" and commit != kept:
        ref = save_ref(root, tag, f"run-{number}", commit)
        moved = f"; the tried change is kept at {ref}"
        if status == "discard" and cand.get("recommendation") == "rebase":
            _, line = rebase(root, config, runs, cand["base"], commit, kept, cand["name"],
                             cand["description"])
            lines.append(line)
    return commit, moved, lines


def recover(root: str, config: dict) -> list[str]:
    """After an interruption in the middle of a wave (log lock held): stop runs whose
    worker is gone, and say which candidates finished, which were lost, and which can
    be re-queued. Candidates whose worker still runs are left alone."""
    lines = []
    busy = {w["slot"] for w in workers(config) if worker_pid(root, w["slot"])}
    for w in workers(config):
        if w["slot"] not in busy and os.path.exists(worker_path(root, w["slot"])):
            os.unlink(worker_path(root, w["slot"]))
    for c in candidates(root):
        state, name = c.get("state"), c["name"]
        if state == "running" and c.get("slot") in busy:
            lines.append(f"wave: {name} is still running on {c.get('worker')}")
        elif state == "running" and config.get("backend") == "slurm":
            lines.append(slurm_recovery_line(root, name))
        elif state == "running":
            stopped = stop_leftover_run(root, running_path(root, name))
            c["state"] = "lost"
            save(root, c)
            lines.append(f"wave: {name} was lost (its run on {c.get('worker')} was interrupted"
                         + ("; stopped what was left of it" if stopped else "") + "): "
                         "submit-wave re-queues it (same commit, a new seed)")
        elif state in ("done", "decided"):
            c["state"] = "done"         # judged again against the kept state as it is now
            save(root, c)
            value = (c.get("samples") or [None])[-1]
            result = (f"{config['metric']} {fmt(value)}" if value is not None
                      else f"status {c.get('run_status')}")
            lines.append(f"wave: {name} finished, not logged ({result}): wait-wave shows it with "
                         f"its recommendation, then log-experiment --candidate {name}")
        elif state == "queued":
            lines.append(f"wave: {name} is queued: submit-wave starts it again")
        elif state == "lost":
            lines.append(f"wave: {name} was lost: submit-wave re-queues it")
        elif state == "prepared":
            lines.append(f"wave: {name} is prepared ({worktree(root, name)}): edit it, then submit-wave")
    if config.get("backend") == "slurm":
        ensure_workers(root, config)    # followers for the jobs whose worker died
    return lines


def slurm_recovery_line(root: str, name: str) -> str:
    """What became of a Slurm candidate's job while no worker followed it."""
    job = job_of(root, name)
    if job is None:
        return (f"wave: {name} was being submitted when its worker stopped: a worker takes it "
                "up again (its job, if sbatch took it, else a new one)")
    st = job_state(job)
    if st and (st["state"] in ACTIVE or st["state"] == UNREACHABLE):
        return (f"wave: {name} is still running as Slurm job {job} ({describe(job)}): a worker "
                "follows it again; wait-wave shows its result")
    return (f"wave: {name} finished as Slurm job {job} ({describe(job)}) while no worker "
            "followed it: its result is read now; wait-wave shows it")


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
    if config.get("backend") == "slurm":
        lines += slurm_cancel_all(config)
    return lines
