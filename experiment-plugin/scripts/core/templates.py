"""What a project with no training code starts from: this repository's fixed harness
(prepare.py, dataset_cache.py, data_sources.py, datasets/ with the embedded classics
shards), its training templates (train.py, train_mlx.py), bench.py, program.md and
pyproject.toml, copied into the project.

They ship in the plugin's templates/ folder. In this repository each entry there is a
relative link to the file at the repository root, so git holds one copy of each;
`claude plugin install` copies the plugin into its cache and follows the links, so an
installed plugin holds the files themselves. Either way they are read through
TEMPLATES_DIR, never through the repository the plugin came from.
"""
from __future__ import annotations

import os

from .common import PLUGIN_ROOT, UserError, write_atomic

TEMPLATES_DIR = os.path.join(PLUGIN_ROOT, "templates")
# What a copy must hold to be a project: a link the installer could not follow (a
# sparse checkout, a link git wrote as text) must not give half a harness.
REQUIRED = ("prepare.py", "dataset_cache.py", "data_sources.py", "train.py", "train_mlx.py",
            "program.md", "pyproject.toml", "datasets/classics/shard_00000.parquet")
REINSTALL = "reinstall the plugin (claude plugin install experiment@autoresearch)"


def template_files(source: str = TEMPLATES_DIR) -> list[str]:
    """The files to copy, as sorted paths relative to `source` ('/'-separated)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
        dirnames[:] = sorted(n for n in dirnames if n != "__pycache__")
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, source).replace(os.sep, "/")
            if name.endswith(".pyc"):
                continue
            if not os.path.isfile(path):
                raise UserError(f"the plugin's template {rel} points nowhere ({os.readlink(path)}): "
                                f"{REINSTALL}")
            if os.path.getsize(path) < 256 and _is_link_text(path):
                raise UserError(f"the plugin's template {rel} is a link checked out as text "
                                f"(git core.symlinks is off): enable symlinks and {REINSTALL}")
            found.append(rel)
    missing = [f for f in REQUIRED if f not in found]
    if missing:
        raise UserError(f"the plugin's templates in {source} lack {', '.join(missing[:3])}"
                        f"{' ...' if len(missing) > 3 else ''}: {REINSTALL}")
    return sorted(found)


def _is_link_text(path: str) -> bool:
    """A link that git wrote as a small file holding its target (on a checkout without
    symlinks): one line naming a path up the tree."""
    with open(path, "rb") as f:
        data = f.read()
    return data.startswith(b"../") and b"\n" not in data.rstrip(b"\n")


def copy_templates(dest_root: str, source: str = TEMPLATES_DIR) -> list[str]:
    """Copy every template into `dest_root` (each file written atomically); returns the
    relative paths copied. Refuses, before copying anything, when one already exists."""
    files = template_files(source)
    present = [f for f in files if os.path.lexists(os.path.join(dest_root, f))]
    if present:
        more = f" and {len(present) - 3} more" if len(present) > 3 else ""
        raise UserError(f"{dest_root} already has {', '.join(present[:3])}{more}: the templates "
                        "are copied only into a project without them (move those away, or set "
                        "up the project as it is)")
    for rel in files:
        dest = os.path.join(dest_root, *rel.split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(os.path.join(source, *rel.split("/")), "rb") as f:
            write_atomic(dest, f.read())
    return files
