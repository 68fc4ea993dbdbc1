"""The plugin installed the way Claude Code plugins are shared: this repository added as
a marketplace, `experiment@autoresearch` installed from it, and a session run in a
project elsewhere with only the installed plugin loaded (no --plugin-dir).

From a GitHub marketplace (`claude plugin marketplace add owner/repo`) the CLI clones
the repository and copies the plugin into its versioned cache, and loads it from
there: the commands expand to that copy's path, its scripts set up, run and log, its
hooks guard the harness and end the loop at the cap, and nothing is written into its
folder. The clone is served offline: git in the throwaway HOME rewrites the GitHub
address to a local repository holding what would be pushed. From a local path the
CLI loads the plugin in place, from the checkout itself.

Needs the CLI (bash dev.sh test installs it); skipped without it, failed in CI."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from core import templates
from plugin_helpers import REPO, git, make_project, records, require_claude
from plugin_helpers_model import ScriptedModel, guarded_baseline, only_result, text, tool, user_text

MARKETPLACE = json.loads((REPO / ".claude-plugin" / "marketplace.json").read_text())["name"]
GITHUB_REPO = "example-owner/autoresearch"          # never contacted: see github_clone_from


def cli(claude, home, *args):
    env = {"HOME": str(home), "PATH": os.environ["PATH"],
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
    proc = subprocess.run([claude, *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"claude {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def published_copy(dest: Path) -> Path:
    """The repository as it would be pushed, committed in a repository of its own: every
    file git tracks or would add (links kept as links), from the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, listed.split("\0")):
        src, out = REPO / rel, dest / rel
        if not os.path.lexists(src):
            continue                                   # deleted in the work tree
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "-c", "user.email=t@example.com", "-c", "user.name=T", "commit", "-q", "-m", "publish")
    return dest


def github_clone_from(home: Path, repo: Path) -> None:
    """Git in `home` fetches GITHUB_REPO (over HTTPS or SSH, as the CLI tries) from `repo`."""
    for address in (f"https://github.com/{GITHUB_REPO}.git", f"git@github.com:{GITHUB_REPO}.git"):
        subprocess.run(["git", "config", "--file", str(home / ".gitconfig"), "--add",
                        f"url.file://{repo}.insteadOf", address], check=True)


def init_event(stdout: str) -> dict:
    return next(e for e in map(json.loads, stdout.splitlines()) if e.get("subtype") == "init")


# Claude Code marks its copy of a plugin in use with .in_use/<pid>, made and removed
# as its own processes come and go: the CLI's, not the plugin's, and timed by it.
CLI_MARKERS = {".in_use"}


def snapshot(folder):
    """Every file and folder in `folder`, with each file's content hash, leaving out
    the CLI's own markers."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if CLI_MARKERS & set(rel.parts):
            continue
        out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def test_the_snapshot_of_an_installed_copy_ignores_the_cli_markers(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "run").write_text("x")
    before = snapshot(tmp_path)
    (tmp_path / ".in_use").mkdir()
    (tmp_path / ".in_use" / "4242").write_text("")
    assert snapshot(tmp_path) == before
    (tmp_path / "scripts" / "new").write_text("y")          # what the plugin writes still counts
    assert snapshot(tmp_path) != before


def test_the_marketplace_validates_strictly():
    claude = require_claude()
    proc = subprocess.run([claude, "plugin", "validate", "--strict", str(REPO)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "marketplace.json" in proc.stdout, proc.stdout + proc.stderr
    (entry,) = json.loads((REPO / ".claude-plugin" / "marketplace.json").read_text())["plugins"]
    assert (entry["name"], entry["source"]) == ("experiment", "./experiment-plugin")


def test_install_from_the_marketplace_and_run_a_session(tmp_path):
    claude = require_claude()
    home = tmp_path / "home"
    home.mkdir()
    github_clone_from(home, published_copy(tmp_path / "published"))
    added = cli(claude, home, "plugin", "marketplace", "add", GITHUB_REPO)
    assert "Successfully added marketplace: " + MARKETPLACE in added
    assert "Successfully installed plugin" in cli(claude, home, "plugin", "install", f"experiment@{MARKETPLACE}")

    installed = json.loads((home / ".claude" / "plugins" / "installed_plugins.json").read_text())
    (entry,) = installed["plugins"][f"experiment@{MARKETPLACE}"]
    plugin = Path(os.path.realpath(entry["installPath"]))
    cache = Path(os.path.realpath(home / ".claude" / "plugins" / "cache"))
    assert cache in plugin.parents, plugin                     # Claude Code's copy, not the repo
    listed = subprocess.run([sys.executable, "-B", "-c", "import json, sys; sys.path.insert(0, sys.argv[1]); "
                             "from core import templates; print(json.dumps(templates.template_files()))",
                             str(plugin / "scripts")], capture_output=True, text=True, check=True).stdout
    assert json.loads(listed) == templates.template_files()        # what a new project gets
    for rel in json.loads(listed):
        copied = plugin / "templates" / rel                       # the links, followed
        assert copied.is_file() and not copied.is_symlink(), rel
        assert copied.read_bytes() == (REPO / rel).read_bytes(), rel
    before = snapshot(plugin)

    project = make_project(tmp_path / "proj")
    seen = {}

    def setup(body):
        line = re.search(r'^\s*"([^"\n]*)/scripts/setup-session" (--tag t1 .*)$', user_text(body), re.M)
        assert line, f"no setup-session line in the expanded command:\n{user_text(body)[:3000]}"
        assert os.path.realpath(line.group(1)) == str(plugin)   # ${CLAUDE_PLUGIN_ROOT}: the installed copy
        args = line.group(2).replace("[--dataset <dataset>] [options]", "--dataset classics --budget 1 --max-iterations 1 "
                                                             "--baseline-runs 1")
        return [tool("Bash", command=f'"{line.group(1)}/scripts/setup-session" {args}', timeout=600000)]

    def touch_the_harness(body):
        out = only_result(body, "session t1: branch autoresearch/t1", error=False)
        seen["scripts"] = re.search(r"^scripts: (.+)$", out, re.M).group(1)
        assert os.path.realpath(seen["scripts"]) == str(plugin / "scripts")   # it ran from there
        return [tool("Bash", command="echo '# faster eval' >> prepare.py")]

    def stop_at_cap(body):
        only_result(body, "logged run 1: keep", "iteration cap reached")
        return [text("Iteration cap reached; stopping.")]

    steps = [setup, touch_the_harness, *guarded_baseline(seen), stop_at_cap]
    with ScriptedModel(steps) as model:
        env = model.client_env(str(home))
        env.pop("PYTHONDONTWRITEBYTECODE", None)       # the scripts must not need it
        try:
            proc = subprocess.run(
                [claude, "-p", "/experiment:model t1 classics --max-iterations 1",
                 "--output-format", "stream-json", "--verbose"],
                cwd=project, env=env, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the CLI did not finish: {model.errors or 'no error'}") from None
    assert model.errors == [], model.errors
    assert model.finished, f"the CLI stopped after {model.step} of {len(steps)} steps:\n" \
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    init = init_event(proc.stdout)
    assert [(p["name"], os.path.realpath(p["path"])) for p in init["plugins"]] == [("experiment", str(plugin))]

    runs = [r for r in records(project) if r["type"] == "run"]
    assert [(r["run"], r["status"], r["metric"]) for r in runs] == [(1, "keep", 1.0)]
    assert records(project)[-1]["event"] == "end"                  # the cap ended the session
    assert "faster eval" not in (project / "prepare.py").read_text()   # the installed guard held
    assert git(project, "status", "--porcelain") == ""
    assert snapshot(plugin) == before                              # nothing written into the plugin


def test_install_from_a_local_path_loads_the_checkout_in_place(tmp_path):
    """`claude plugin marketplace add <path>`: the plugin installs, and the CLI loads it
    from the checkout itself (its cache copy is not used), with the four commands."""
    claude = require_claude()
    home = tmp_path / "home"
    home.mkdir()
    checkout = published_copy(tmp_path / "checkout")
    assert "Successfully added marketplace: " + MARKETPLACE in cli(
        claude, home, "plugin", "marketplace", "add", str(checkout))
    cli(claude, home, "plugin", "install", f"experiment@{MARKETPLACE}")
    project = make_project(tmp_path / "proj")
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    proc = subprocess.run([claude, "-p", "hello", "--output-format", "stream-json", "--verbose"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)
    init = init_event(proc.stdout)
    assert [(p["name"], os.path.realpath(p["path"])) for p in init["plugins"]] == \
        [("experiment", os.path.realpath(checkout / "experiment-plugin"))]
    assert {"experiment:model", "experiment:resume", "experiment:summary",
            "experiment:end"} <= set(init["slash_commands"])
    assert init.get("plugin_errors", []) == []
