"""The README's layout block names what is in the repository, and nothing else."""

import os
import re
import subprocess

from conftest import REPO


def test_readme_layout_block_matches_the_tree():
    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.split(r"^```.*$", f.read(), flags=re.M)[1::2]  # the insides of fenced blocks
    (layout,) = [b for b in blocks if "FIXED." in b]
    listed = [line.split()[0] for line in layout.splitlines() if line and not line[0].isspace()]
    for path in listed:
        assert os.path.exists(os.path.join(REPO, path)), f"README lists {path}, which does not exist"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    top = {p.split("/")[0] for p in tracked.splitlines()} - {"README.md"}
    top = {t for t in top if not t.startswith(".") and os.path.exists(os.path.join(REPO, t))}
    assert {p.rstrip("/").split("/")[0] for p in listed} == top
