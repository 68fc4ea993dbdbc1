"""Every git command the loop runs, in one place (see the policy below). Above
`common` only.
"""
from __future__ import annotations

import os

from .common import LOG, SESSION_FILES, STATE_DIR, temp_path, TEMP_PATTERN, UserError

# Every git command the loop runs goes through here. The policy, in one place:
#   * setup-session creates branch autoresearch/<tag> at the current commit;
#   * log-experiment commits the target file for every run that changed it, so the
#     record's commit is exactly the code that was measured;
#   * keep leaves the branch on that commit; discard and crash move the branch back
#     to the last kept commit (`git reset --hard`) and keep the tried commit
#     reachable as refs/autoresearch/<tag>/run-<n>;
#   * resume-session saves a dirty work tree as refs/autoresearch/<tag>/interrupted-<n>
#     and resets to the last kept commit.
# Session files are git-ignored, so none of this ever touches them.


def git(root: str, *args: str, check: bool = True, env: dict | None = None) -> str:
    import subprocess
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise UserError(f"git {' '.join(args[:3])} failed: "
                        f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return proc.stdout.strip()


def git_identity_env(root: str) -> dict:
    """A committer identity for machines without one (fresh CI, containers)."""
    if git(root, "config", "user.email", check=False):
        return {}
    return {"GIT_AUTHOR_NAME": "autoresearch", "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
            "GIT_COMMITTER_NAME": "autoresearch", "GIT_COMMITTER_EMAIL": "autoresearch@localhost"}


def head(root: str) -> str:
    return git(root, "rev-parse", "HEAD")


def current_branch(root: str) -> str:
    try:        # read .git/HEAD directly: no process to start (a worktree falls through)
        with open(os.path.join(root, ".git", "HEAD"), encoding="utf-8") as f:
            ref = f.read().strip()
        if ref.startswith("ref: refs/heads/"):
            return ref[len("ref: refs/heads/"):]
    except OSError:
        pass
    return git(root, "rev-parse", "--abbrev-ref", "HEAD", check=False)


def branch_exists(root: str, branch: str) -> bool:
    import subprocess
    return subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
                          cwd=root, capture_output=True).returncode == 0


def tracked_changes(root: str) -> list[str]:
    import subprocess
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                         capture_output=True, text=True).stdout   # unstripped: XY columns
    return [line[3:] for line in out.splitlines() if line.strip()]


def commit_target(root: str, paths: list[str], message: str) -> str | None:
    """Commit the session's files (the target and its scope) if they differ from HEAD;
    return the new commit, else None."""
    if not git(root, "status", "--porcelain", "--", *paths):
        return None
    git(root, "add", "-A", "--", *paths)
    git(root, "commit", "--no-verify", "-q", "-m", message, "--", *paths,
        env=git_identity_env(root))
    return head(root)


def save_ref(root: str, tag: str, name: str, commit: str) -> str:
    """Keep `commit` reachable as refs/autoresearch/<tag>/<name>; a name already taken
    by another commit (two saves in one second) gets a suffix, never overwritten."""
    ref, n = f"refs/autoresearch/{tag}/{name}", 1
    while True:
        found = git(root, "rev-parse", "--verify", "--quiet", ref, check=False)
        if found == commit:
            return ref
        if found == "":
            # The zero old value: created only if still absent, so a ref is never moved.
            git(root, "update-ref", ref, commit, "0" * 40)
            return ref
        n += 1
        ref = f"refs/autoresearch/{tag}/{name}-{n}"


def reset_to(root: str, commit: str) -> None:
    git(root, "reset", "--hard", "-q", commit)


def add_worktree(root: str, path: str, commit: str) -> None:
    """A candidate's own work tree at `commit` (detached: the session branch moves only
    through log-experiment)."""
    git(root, "worktree", "add", "--detach", "-q", path, commit)


def remove_worktree(root: str, path: str) -> None:
    if os.path.isdir(path):
        git(root, "worktree", "remove", "--force", path, check=False)
    git(root, "worktree", "prune", check=False)


def apply_change(worktree: str, old: str, new: str, paths: list[str]) -> bool:
    """Apply the change from commit `old` to `new` (the session's files only) to the
    work tree at `worktree`, merging where they overlap; False (tree untouched) on a
    conflict. How a winner is re-based onto a kept state that moved."""
    import subprocess
    diff = subprocess.run(["git", "diff", "--binary", old, new, "--", *paths], cwd=worktree,
                          capture_output=True).stdout
    if not diff:
        return True
    proc = subprocess.run(["git", "apply", "--3way", "--index"], cwd=worktree, input=diff,
                          capture_output=True)
    if proc.returncode != 0:
        git(worktree, "reset", "--hard", "-q", check=False)
        return False
    git(worktree, "reset", "-q", check=False)        # keep it as a work-tree edit
    return True


def applies_cleanly(root: str, onto: str, parent: str, commit: str) -> bool:
    """Would the change parent..commit apply cleanly on top of `onto`? Checked in a
    throwaway index, so neither the work tree nor any branch is touched (finalize's plan)."""
    import subprocess
    index = os.path.join(root, STATE_DIR, "finalize.index")
    env = {**os.environ, "GIT_INDEX_FILE": index}
    try:
        subprocess.run(["git", "read-tree", onto], cwd=root, env=env, check=True, capture_output=True)
        diff = subprocess.run(["git", "diff", "--binary", parent, commit], cwd=root,
                              capture_output=True, check=True).stdout
        return subprocess.run(["git", "apply", "--cached", "--check"], cwd=root, env=env,
                              input=diff, capture_output=True).returncode == 0
    finally:
        if os.path.exists(index):
            os.unlink(index)


def commit_of(record: dict) -> str:
    """The full hash of a run's commit. Seed 001's `commit` is the short hash; the
    full one is kept beside it as `commit_sha` (logs of the first format held the full
    hash in `commit`)."""
    return record.get("commit_sha") or record["commit"]


def last_kept_commit(config: dict, runs: list[dict]) -> str:
    for r in reversed(runs):
        if r["status"] == "keep":
            return commit_of(r)
    return config["base_commit"]


def ensure_ignored(root: str) -> list[str]:
    """Make sure git ignores the session files (so reset/clean never touch them), by
    adding any missing ones to .git/info/exclude; the project's .gitignore is left
    alone. Returns the names added."""
    import subprocess
    # The state folder is asked about as a folder ("name/"), so that a directory-only
    # pattern such as `.autoresearch/` in the project's .gitignore counts as covering it.
    names = [n + "/" if n == STATE_DIR else n for n in SESSION_FILES]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=root,
                          capture_output=True, text=True)
    ignored = {n.rstrip("/") for n in proc.stdout.split()}
    missing = [n.rstrip("/") for n in names if n.rstrip("/") not in ignored]
    probe = temp_path(os.path.join(root, LOG))         # a name the pattern must cover
    if subprocess.run(["git", "check-ignore", "--no-index", "-q", os.path.basename(probe)],
                      cwd=root).returncode != 0:
        missing.append(TEMP_PATTERN)
    if missing:
        info = git(root, "rev-parse", "--git-path", "info/exclude")
        path = info if os.path.isabs(info) else os.path.join(root, info)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n# autoresearch session files\n" +
                    "".join(f"/{n}\n" if n != TEMP_PATTERN else f"{n}\n" for n in missing))
    return missing


def store_blob(root: str, ref: str, data: bytes) -> str:
    """Keep `data` as a git object named by `ref` (a ref may name a blob): a copy of a
    session file that `git clean`, `rm` and a truncating write do not reach."""
    import subprocess
    proc = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=root, input=data,
                          capture_output=True)
    if proc.returncode != 0:
        raise UserError(f"git hash-object failed: {proc.stderr.decode(errors='replace').strip()[-200:]}")
    blob = proc.stdout.decode().strip()
    git(root, "update-ref", ref, blob)
    return blob


def blob_at(root: str, ref: str) -> bytes | None:
    """The content of the blob `ref` names, or None when there is no such ref."""
    import subprocess
    proc = subprocess.run(["git", "cat-file", "blob", ref], cwd=root, capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def file_at(root: str, commit: str, path: str) -> bytes | None:
    """The bytes of `path` as committed at `commit`, or None where it has no such file."""
    return blob_at(root, f"{commit}:{path}")


def drop_ref(root: str, ref: str) -> None:
    git(root, "update-ref", "-d", ref, check=False)
