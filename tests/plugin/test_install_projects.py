"""The installed plugin (from the marketplace, Claude Code's cached copy) runs a
three-run session in each kind of project, driven through the real CLI by a scripted
model: a project of the person's own maximising val_acc with `uv run`, a clone
shaped like karpathy/autoresearch, and an empty directory set up with --init. Each
ends with a summary whose research config names the kind of project, how runs start
and what is off.

Needs the CLI (bash dev.sh test installs it); skipped without it, failed in CI."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from plugin_helpers import git, new_repo, records, require_claude
from plugin_helpers_model import ScriptedModel, log_as_recommended, only_result, text, tool, user_text
from plugin.test_install import GITHUB_REPO, MARKETPLACE, cli, github_clone_from, published_copy
from plugin.test_own_project import UV_DIR, karpathy_clone, toy_project

# In one test process (`-n 2 --dist loadgroup`): one installed plugin serves the module, built once.
pytestmark = pytest.mark.xdist_group("install-projects")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A HOME with experiment@autoresearch installed from the (offline) GitHub marketplace."""
    claude = require_claude()
    base = tmp_path_factory.mktemp("installed")
    home = base / "home"
    home.mkdir()
    github_clone_from(home, published_copy(base / "published"))
    cli(claude, home, "plugin", "marketplace", "add", GITHUB_REPO)
    cli(claude, home, "plugin", "install", f"experiment@{MARKETPLACE}")
    entry, = json.loads((home / ".claude" / "plugins" / "installed_plugins.json").read_text()
                        )["plugins"][f"experiment@{MARKETPLACE}"]
    return claude, home, Path(os.path.realpath(entry["installPath"]))


# kind: (the command's arguments, the setup arguments the model runs with them, the
# research config's lines, the two edits)
KINDS = {
    "own": ("acc1 --metric val_acc", "--tag acc1 --metric val_acc --max-iterations 3",
            ["your own training repository", "run        uv run train.py", "val_acc, higher is better",
             "off        the harness's result channel"],
            ["sed -i 's/^ACC = 0.80/ACC = 0.85/' train.py", "sed -i 's/^ACC = 0.85/ACC = 0.70/' train.py"]),
    "karpathy": ("k1", "--tag k1 --max-iterations 3",
                 ["a karpathy/autoresearch clone", "run        uv run train.py",
                  "val_bpb, lower is better", "enforced by the script itself", "bench.py"],
                 ["sed -i 's/^VAL_BPB = 0.997900/VAL_BPB = 0.990000/' train.py",
                  "sed -i 's/^VAL_BPB = 0.990000/VAL_BPB = 0.999000/' train.py"]),
    "init": ("i1 classics --init", "--tag i1 --dataset classics --init --max-iterations 3 "
                                   "--budget 1 --policy strict",
             ["this project's harness", "classics", "val_bpb, lower is better"],
             ["sed -i 's/^DEPTH = .*/DEPTH = 1/' train.py", "echo '# the same model' >> train.py"]),
}


def make(kind: str, path: Path, home: Path) -> Path:
    if kind == "own":
        return toy_project(path)
    if kind == "karpathy":
        p = karpathy_clone(path)
        subprocess.run(["uv", "run", "prepare.py"], cwd=p, check=True, capture_output=True,
                       env={**os.environ, "HOME": str(home), "PATH": UV_DIR + os.pathsep + os.environ["PATH"]})
        return p
    return new_repo(path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_three_run_session_in_each_kind_of_project(installed, tmp_path, kind, request):
    claude, home, plugin = installed
    arguments, options, config_lines, edits = KINDS[kind]
    project = make(kind, tmp_path / kind, home)
    seen = {}

    def setup(body):
        line = re.search(r'^\s*("([^"\n]*)/scripts/setup-session" .*)$', user_text(body), re.M)
        assert line and os.path.realpath(line.group(2)) == str(plugin), user_text(body)[:2000]
        seen["scripts"] = line.group(2) + "/scripts"
        return [tool("Bash", command=f'"{seen["scripts"]}/setup-session" {options}', timeout=600000)]

    def run(check):
        def step(body):
            check(body)
            return [tool("Bash", command=f'"{seen["scripts"]}/run-experiment"', timeout=600000)]
        return step

    def after_setup(body):
        out = only_result(body, "research config", *config_lines, error=False)
        assert str(plugin) in out                                   # the installed copy set up

    def log(n):
        def step(body):
            out = only_result(body, f"status: ok run {n}")
            return log_as_recommended(seen["scripts"], out, f"idea {n}", seen.setdefault("decisions", []))
        return step

    def edit(n):
        def step(body):
            only_result(body, f"logged run {n}")
            return [tool("Bash", command=edits[n - 1])]
        return step

    def summarize(body):
        only_result(body, "logged run 3", "iteration cap reached")
        return [tool("Bash", command=f'"{seen["scripts"]}/summarize"')]

    def done(body):
        only_result(body, "wrote autoresearch-summary.md")
        return [text("Three runs done; the summary is written.")]

    steps = [setup, run(after_setup), log(1), edit(1), run(lambda b: None), log(2), edit(2),
             run(lambda b: None), log(3), summarize, done]
    with ScriptedModel(steps) as model:
        env = model.client_env(str(home))
        env["PATH"] = UV_DIR + os.pathsep + env.get("PATH", os.environ["PATH"])
        env["UV_OFFLINE"] = "1"
        env["AUTORESEARCH_LOAD_CHECK"] = "0"    # tests in parallel: no run is "disturbed"
        if kind == "init":      # the embedded data, prepared once for the tests; a short eval
            env.update(request.getfixturevalue("classics_cache"), AUTORESEARCH_EVAL_TOKENS="8192")
        proc = subprocess.run([claude, "-p", f"/experiment:model {arguments}", "--output-format",
                               "stream-json", "--verbose"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=400)
    assert model.errors == [], model.errors
    assert model.finished, f"stopped after {model.step} of {len(steps)} steps:\n{proc.stdout[-3000:]}"
    runs = [r for r in records(project) if r["type"] == "run"]
    assert len(runs) == 3 and runs[0]["status"] == "keep"
    summary = (project / "autoresearch-summary.md").read_text()
    for line in config_lines:
        assert line in summary
    assert git(project, "status", "--porcelain", "--untracked-files=no") == ""
    if kind == "own":
        assert seen["decisions"] == ["keep", "keep", "discard"]
    if kind == "init":
        assert git(project, "log", "--format=%s", "main") == \
            "The autoresearch harness and templates, as the session's base"
