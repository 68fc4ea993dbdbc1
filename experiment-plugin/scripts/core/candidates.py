"""The state of a wave's candidates: one JSON file each under .autoresearch/wave/,
one git worktree each under .autoresearch/worktrees/. What the hooks and reports
read about candidates, and the steps that make, commit and forget one.
"""
from __future__ import annotations

import json
import os
import re

from .common import editable_files, now_iso, read_json, UserError, WAVE_DIR, WORKTREES, write_atomic
from .git import (add_worktree, commit_target, head, last_kept_commit, remove_worktree,
    save_ref, tracked_changes)
from .harness import code_hash

# With --workers W, up to W candidates run at once (core/waves.py has the
# machinery). A candidate is one commit on the kept state in its own git worktree
# under .autoresearch/worktrees/<name>/; its state lives in .autoresearch/wave/<name>.json:
#   prepared  worktree made, waiting for the edit      queued   committed, waiting for a worker
#   running   on a worker                              done     finished, not yet shown
#   decided   shown by wait-wave with a recommendation lost     its run was killed (resume)
# Logging a candidate removes both. What the hooks and reports need is read here.

IN_FLIGHT = ("queued", "running")


def candidates(root: str) -> list[dict]:
    """Every candidate not yet logged, oldest first."""
    folder = os.path.join(root, WAVE_DIR)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and n[0] == "c")
    except OSError:
        return []
    out = []
    for n in names:
        data = read_json(os.path.join(folder, n), default=None)
        if isinstance(data, dict) and data.get("name"):
            out.append(data)
    return sorted(out, key=lambda c: int(c["name"][1:]) if c["name"][1:].isdigit() else 0)


def wave_line(root: str) -> str:
    """'2 candidates in flight (c3 running on cpu0, c4 queued), 1 finished waiting for
    wait-wave' or "" when no candidate is open."""
    cands = candidates(root)
    if not cands:
        return ""
    flying = [c for c in cands if c.get("state") in IN_FLIGHT]
    parts = [f"{c['name']} {c['state']}" + (f" on {c['worker']}" if c.get("state") == "running"
                                            and c.get("worker") else "") for c in flying]
    text = f"{len(flying)} candidate(s) in flight" + (f" ({', '.join(parts)})" if parts else "")
    waiting = [c["name"] for c in cands if c.get("state") in ("done", "decided")]
    if waiting:
        text += f", {len(waiting)} finished waiting to be logged ({', '.join(waiting)})"
    other = [c["name"] for c in cands if c.get("state") in ("prepared", "lost")]
    if other:
        text += f", {len(other)} prepared or lost, not submitted ({', '.join(other)})"
    return text


def candidate_root(root: str, rel: str) -> tuple[str, str] | None:
    """For a path (relative to the project root) inside a candidate's worktree: that
    worktree's root and the path inside it, so the guard judges it like the project."""
    parts = rel.split(os.sep)
    base = WORKTREES.split(os.sep)
    if len(parts) > len(base) + 1 and parts[:len(base)] == base:
        return os.path.join(root, *parts[:len(base) + 1]), os.path.join(*parts[len(base) + 1:])
    return None


def state_file(root: str, name: str) -> str:
    return os.path.join(root, WAVE_DIR, f"{name}.json")


def worktree(root: str, name: str) -> str:
    return os.path.join(root, WORKTREES, name)


def log_path(root: str, name: str) -> str:
    return os.path.join(root, WAVE_DIR, f"{name}.log")


def running_path(root: str, name: str) -> str:
    return os.path.join(root, WAVE_DIR, f"{name}.running")


def load(root: str, name: str) -> dict:
    cand = read_json(state_file(root, name), default=None)
    if not cand:
        raise UserError(f"no open candidate {name!r}: wait-wave --list shows the open ones")
    return cand


def save(root: str, cand: dict) -> None:
    os.makedirs(os.path.join(root, WAVE_DIR), exist_ok=True)
    write_atomic(state_file(root, cand["name"]), json.dumps(cand, indent=1) + "\n")


def forget(root: str, name: str) -> None:
    """A logged or dropped candidate: its worktree and state go; its log stays."""
    remove_worktree(root, worktree(root, name))
    for path in (state_file(root, name), running_path(root, name)):
        if os.path.exists(path):
            os.unlink(path)


def next_name(root: str, runs: list[dict]) -> str:
    """c1, c2, ...: never a name used before in this session (the log keeps them)."""
    used = [r.get("candidate") for r in runs]
    for folder in (WAVE_DIR, WORKTREES):
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
    base = base or last_kept_commit(config, runs)
    path = worktree(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    add_worktree(root, path, base)
    cand = {"name": name, "state": "prepared", "description": description, "base": base,
            "unchanged": unchanged, "created": now_iso(), "samples": [], "seeds": [],
            "disturbed": []}
    if rebased_from:
        cand["rebased_from"] = rebased_from
    save(root, cand)
    return cand


def commit(root: str, config: dict, cand: dict) -> None:
    """Commit the candidate's edit in its worktree and queue it. The commit is kept
    reachable as refs/autoresearch/<tag>/cand-<name>, whatever happens to the worktree."""
    path, files = worktree(root, cand["name"]), editable_files(config)
    stray = [f for f in tracked_changes(path) if f not in files]
    if stray:
        raise UserError(f"{cand['name']} changed {', '.join(stray[:3])}, outside the session's "
                            f"files ({', '.join(files)}): undo that in {path} (nothing was submitted)")
    made = commit_target(path, files, f"candidate {cand['name']}: {cand['description']}")
    if made is None and not cand.get("unchanged"):
        raise UserError(f"{cand['name']} has no change yet: edit {os.path.join(path, files[0])} "
                            "first, or drop it with new-candidate --drop "
                            f"{cand['name']} (nothing was submitted)")
    cand["commit"] = made or head(path)
    cand["target_sha"] = code_hash(path, config)
    save_ref(root, config["tag"], f"cand-{cand['name']}", cand["commit"])
    cand.update(state="queued", queued=now_iso())
