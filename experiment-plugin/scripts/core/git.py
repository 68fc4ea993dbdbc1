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


# Git reads the repository's configuration on every call, and configuration can name
# programs for git to run: hooks (core.hooksPath), a file-system monitor, filters that
# .gitattributes attach to the target, diff and merge drivers, pagers, editors,
# credential helpers. The agent can write that configuration, and the scripts' own
# git calls must never run its code, nor read objects through `git replace`. So every
# call here runs with hooks, the monitor, replace objects, transports and auto-gc off,
# without the system configuration or inherited GIT_* variables (GIT_CONFIG_PARAMETERS
# would smuggle settings in), and with every configured filter, diff and merge driver
# emptied (an empty command is one git does not run). A command-line setting outranks
# every configuration file, included ones too.
SAFE_CONFIG = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "core.pager=cat",
               "core.editor=:", "sequence.editor=:", "core.askPass=", "credential.helper=",
               "diff.external=", "core.alternateRefsCommand=", "gc.auto=0",
               "maintenance.auto=false", "commit.gpgSign=false", "tag.gpgSign=false",
               "protocol.allow=never")
KEPT_ENV = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL")
DRIVER_KEYS = {"filter": ("clean", "smudge", "process"), "diff": ("command", "textconv"),
               "merge": ("driver",)}
_DRIVERS: dict = {}


def git_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in KEPT_ENV}
    env.update(GIT_NO_REPLACE_OBJECTS="1", GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
               GIT_PAGER="cat", GIT_EDITOR=":")
    env.update(extra or {})
    return env


def _drivers_off(root: str) -> list[str]:
    """`-c` settings that empty every filter, diff and merge driver the configuration
    names (read once per repository and process)."""
    import subprocess
    key = os.path.realpath(root)
    if key not in _DRIVERS:
        base = ["git", "--no-replace-objects"] + [a for c in SAFE_CONFIG for a in ("-c", c)]
        out = subprocess.run(base + ["config", "-z", "--get-regexp", r"^(filter|diff|merge)\."],
                             cwd=root, capture_output=True, env=git_env()).stdout
        found = {}
        for entry in out.split(b"\0"):
            name = entry.split(b"\n", 1)[0].decode("utf-8", "replace")
            section, _, rest = name.partition(".")
            driver = rest.rpartition(".")[0]
            if driver and section.lower() in DRIVER_KEYS:
                for k in DRIVER_KEYS[section.lower()]:
                    found[f"{section}.{driver}.{k}="] = True
                if section.lower() == "filter":
                    found[f"{section}.{driver}.required=false"] = True
        _DRIVERS[key] = [a for setting in found for a in ("-c", setting)]
    return _DRIVERS[key]


def run_git(root: str, *args: str, input: bytes | None = None, env: dict | None = None):
    """Run one git command the safe way (above); the CompletedProcess, output as bytes."""
    import subprocess
    command = ["git", "--no-replace-objects"] + [a for c in SAFE_CONFIG for a in ("-c", c)]
    return subprocess.run(command + _drivers_off(root) + list(args), cwd=root, input=input,
                          capture_output=True, env=git_env(env))


def git(root: str, *args: str, check: bool = True, env: dict | None = None) -> str:
    proc = run_git(root, *args, env=env)
    out = proc.stdout.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        said = (proc.stderr.decode("utf-8", "replace") or out).strip().splitlines()[-1:]
        raise UserError(f"git {' '.join(args[:3])} failed: {said}")
    return out.strip()


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
    return run_git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}").returncode == 0


def leave_branch(root: str, branch: str, back_to: str) -> None:
    """Check out `back_to` (a branch or a commit) and delete `branch`."""
    git(root, "checkout", "-q", back_to)
    git(root, "branch", "-q", "-D", branch)


def changed_files(root: str, old: str, new: str) -> list[str]:
    """The files that differ between two commits (what a reset from `new` to `old` puts back)."""
    return git(root, "diff", "--name-only", "--no-ext-diff", old, new).split("\n") if old != new else []


def tracked_changes(root: str) -> list[str]:
    out = run_git(root, "status", "--porcelain", "--untracked-files=no").stdout.decode(
        "utf-8", "replace")                                   # unstripped: XY columns
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
            git(root, "update-ref", "--no-deref", ref, commit, "0" * 40)
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
    diff = run_git(worktree, "diff", "--binary", "--no-ext-diff", "--no-textconv", old, new,
                   "--", *paths).stdout
    if not diff:
        return True
    proc = run_git(worktree, "apply", "--3way", "--index", input=diff)
    if proc.returncode != 0:
        git(worktree, "reset", "--hard", "-q", check=False)
        return False
    git(worktree, "reset", "-q", check=False)        # keep it as a work-tree edit
    return True


def applies_cleanly(root: str, onto: str, parent: str, commit: str) -> bool:
    """Would the change parent..commit apply cleanly on top of `onto`? Checked in a
    throwaway index, so neither the work tree nor any branch is touched (finalize's plan)."""
    index = os.path.join(root, STATE_DIR, "finalize.index")
    env = {"GIT_INDEX_FILE": index}
    try:
        if run_git(root, "read-tree", onto, env=env).returncode != 0:
            raise UserError(f"git read-tree {onto} failed")
        diff = run_git(root, "diff", "--binary", "--no-ext-diff", "--no-textconv", parent, commit)
        if diff.returncode != 0:
            raise UserError(f"git diff {parent[:7]} {commit[:7]} failed")
        return run_git(root, "apply", "--cached", "--check", input=diff.stdout,
                       env=env).returncode == 0
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
    # The state folder is asked about as a folder ("name/"), so that a directory-only
    # pattern such as `.autoresearch/` in the project's .gitignore counts as covering it.
    names = [n + "/" if n == STATE_DIR else n for n in SESSION_FILES]
    proc = run_git(root, "check-ignore", "--no-index", *names)
    ignored = {n.rstrip("/") for n in proc.stdout.decode("utf-8", "replace").split()}
    missing = [n.rstrip("/") for n in names if n.rstrip("/") not in ignored]
    probe = temp_path(os.path.join(root, LOG))         # a name the pattern must cover
    if run_git(root, "check-ignore", "--no-index", "-q", os.path.basename(probe)).returncode != 0:
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
    session file that `git clean`, `rm` and a truncating write do not reach. The ref
    itself is written (--no-deref): a symbolic ref put in its place is replaced by a
    plain one, never followed to a ref someone else chose."""
    proc = run_git(root, "hash-object", "-w", "--no-filters", "--stdin", input=data)
    if proc.returncode != 0:
        raise UserError(f"git hash-object failed: {proc.stderr.decode(errors='replace').strip()[-200:]}")
    blob = proc.stdout.decode().strip()
    git(root, "update-ref", "--no-deref", ref, blob)
    return blob


def ref_blob(root: str, ref: str) -> tuple[bytes | None, str]:
    """The content of the blob that `ref` names, as (bytes, "") for a plain ref; (None,
    why) where there is no such ref, or it is symbolic or names something else (then
    its content is not trusted)."""
    out = git(root, "for-each-ref", "--format=%(objectname) %(objecttype) %(symref)", ref,
              check=False)
    line = next((l for l in out.splitlines() if l), "")
    if not line:
        return None, "missing"
    sha, kind, *symref = line.split(" ")
    if symref and symref[0]:
        return None, f"a symbolic ref to {symref[0]}"
    if kind != "blob":
        return None, f"a {kind}, not a copy"
    proc = run_git(root, "cat-file", "blob", sha)
    return (proc.stdout, "") if proc.returncode == 0 else (None, "unreadable")


def blob_at(root: str, ref: str) -> bytes | None:
    """The content of the blob `ref` names (a plain ref, or `commit:path`), or None."""
    if ref.startswith("refs/") and ":" not in ref:
        return ref_blob(root, ref)[0]
    proc = run_git(root, "cat-file", "blob", ref)
    return proc.stdout if proc.returncode == 0 else None


def file_at(root: str, commit: str, path: str) -> bytes | None:
    """The bytes of `path` as committed at `commit`, or None where it has no such file."""
    return blob_at(root, f"{commit}:{path}")


def drop_ref(root: str, ref: str) -> None:
    git(root, "update-ref", "--no-deref", "-d", ref, check=False)
