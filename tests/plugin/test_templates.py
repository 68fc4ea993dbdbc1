"""The templates a project with no training code starts from: the plugin's templates/
holds the harness and templates (links to the repository root here, the files
themselves once installed), and copying them gives a project that prepares its
embedded dataset offline."""

import os
import shutil
import subprocess
import sys

import pytest

from core import common, templates
from plugin_helpers import PLUGIN, REPO

HARNESS = ["prepare.py", "dataset_cache.py", "data_sources.py", "train.py", "train_mlx.py",
           "bench.py", "program.md", "pyproject.toml"]


def test_the_templates_are_the_repository_files():
    files = templates.template_files()
    assert set(HARNESS) <= set(files)
    shards = sorted(f for f in files if f.startswith("datasets/classics/") and f.endswith(".parquet"))
    assert shards == sorted(f"datasets/classics/{n}" for n in os.listdir(REPO / "datasets" / "classics")
                            if n.endswith(".parquet")) != []
    for rel in files:
        assert (PLUGIN / "templates" / rel).read_bytes() == (REPO / rel).read_bytes(), rel


def test_a_copy_prepares_the_embedded_dataset_offline(tmp_path):
    project = tmp_path / "new"
    project.mkdir()
    copied = templates.copy_templates(str(project))
    assert copied == templates.template_files()
    for rel in copied:
        path = project / rel
        assert path.is_file() and not path.is_symlink(), rel
        assert path.read_bytes() == (REPO / rel).read_bytes(), rel
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "cache"), "AUTORESEARCH_QUIET": "1"}
    for args in ([], ["--verify"]):
        proc = subprocess.run([sys.executable, "prepare.py", "--dataset", "classics", *args],
                              cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: classics verified" in proc.stdout
    assert str(tmp_path / "cache") in proc.stdout          # the copy's own data, not this repo's


def test_existing_files_are_never_overwritten(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    (project / "train.py").write_text("my own model\n")
    (project / "program.md").write_text("my notes\n")
    with pytest.raises(common.UserError) as e:
        templates.copy_templates(str(project))
    message = str(e.value)
    assert "\n" not in message and "program.md, train.py" in message
    assert sorted(p.name for p in project.iterdir()) == ["program.md", "train.py"]   # nothing copied
    assert (project / "train.py").read_text() == "my own model\n"


def test_a_broken_template_folder_says_reinstall(tmp_path):
    source = tmp_path / "templates"
    shutil.copytree(PLUGIN / "templates", source)                  # the files themselves
    assert templates.template_files(str(source)) == templates.template_files()
    (source / "prepare.py").unlink()                               # a link the installer dropped
    with pytest.raises(common.UserError, match=r"lack prepare\.py: reinstall"):
        templates.template_files(str(source))
    (source / "prepare.py").symlink_to("../../missing.py")
    with pytest.raises(common.UserError, match="points nowhere.*reinstall"):
        templates.template_files(str(source))
    (source / "prepare.py").unlink()
    (source / "prepare.py").write_text("../../prepare.py")   # git without symlinks
    with pytest.raises(common.UserError, match="checked out as text"):
        templates.template_files(str(source))
