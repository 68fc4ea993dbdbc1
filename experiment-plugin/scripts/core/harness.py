"""The fixed harness: which files a session may not change, and their hashes (taken
at setup, checked around every run); the hash of the code a run measured.
"""
from __future__ import annotations

import hashlib
import os

from .common import editable_files
from .git import file_at

# The fixed harness: hashed at setup, verified around every run, guarded by the hook.
FIXED_FILES = ("prepare.py", "dataset_cache.py", "data_sources.py")
FIXED_DIRS = ("datasets",)
# Changing these would change the dependencies, which a session must not do.
DEPENDENCY_FILES = ("pyproject.toml", "uv.lock", "requirements.txt", "setup.py", "setup.cfg")


def fixed_file_list(root: str, extra: list[str] | tuple = ()) -> list[str]:
    """Relative paths of every fixed file present: FIXED_FILES, datasets/**, and a
    session's --read-only files (`extra`)."""
    found = [f for f in (*FIXED_FILES, *extra) if os.path.isfile(os.path.join(root, f))]
    for d in FIXED_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, d)):
            dirnames[:] = sorted(n for n in dirnames if n != "__pycache__")
            for name in sorted(filenames):
                if not name.endswith(".pyc"):
                    found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_hash(root: str, config: dict, ref: str | None = None) -> str:
    """What identifies the code a run measured: the target's sha256, or with --scope
    files one hash over all of them (runs of identical code are repeats). From the work
    tree, or as committed at `ref` (a file missing there hashes as "-")."""
    files, hashes = editable_files(config), []
    for f in files:
        if ref is None:
            path = os.path.join(root, f)
            hashes.append(hash_file(path) if os.path.isfile(path) else "-")
            continue
        data = file_at(root, ref, f)
        hashes.append(hashlib.sha256(data).hexdigest() if data is not None else "-")
    if len(files) == 1:
        return hashes[0]
    return hashlib.sha256(" ".join(f"{f}:{h}" for f, h in zip(files, hashes)).encode()).hexdigest()


def hash_fixed_files(root: str, extra: list[str] | tuple = ()) -> dict:
    return {rel: hash_file(os.path.join(root, rel)) for rel in fixed_file_list(root, extra)}


def changed_fixed_files(root: str, recorded: dict) -> list[str]:
    """Fixed files whose content differs from the hashes recorded at setup (or that
    appeared or vanished since). Recorded names beyond the harness are the session's
    read-only files: they are checked the same way."""
    extra = [p for p in recorded if p not in FIXED_FILES and p.split("/")[0] not in FIXED_DIRS]
    now = hash_fixed_files(root, extra)
    return sorted(p for p in set(now) | set(recorded) if now.get(p) != recorded.get(p))


# The repair for changed fixed files. resume-session restores the last kept commit;
# a checkout of single files would leave the branch wherever it had been moved.
TAMPER_REPAIR = ("run resume-session (it saves the work tree under refs/autoresearch/, "
                 "restores the last kept commit and checks the fixed files again)")


# The plugin's own code (the scripts that measure and record, the hooks that guard) is
# fixed for a session too: a guard switched off by rewriting it, or a runner that no
# longer checks, shows at the next run. One digest, wherever the plugin is installed.
PLUGIN_PARTS = ("scripts", "hooks")


def plugin_digest(plugin_root: str) -> str:
    h = hashlib.sha256()
    for part in PLUGIN_PARTS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(plugin_root, part)):
            dirnames[:] = sorted(n for n in dirnames if n != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".pyc"):
                    continue
                path = os.path.join(dirpath, name)
                h.update(f"{os.path.relpath(path, plugin_root)}\0{hash_file(path)}\n".encode())
    return h.hexdigest()
