"""A whole night in miniature: the loop played exactly as the skill tells the agent to,
with the plugin's scripts and git only, on the real PyTorch template and the embedded
classics data, in a fresh clone. Git history, autoresearch.jsonl, results.tsv and the
files on disk are checked after every step."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from plugin_helpers import REPO, require_claude
from plugin_helpers_model import ScriptedModel, log_as_recommended, text, tool, tool_results, user_text


BUDGET = 5           # seconds of training per run: enough for a visible learning signal
TAG = "night"
BRANCH = f"autoresearch/{TAG}"
HANG_MARKER = "autoresearch-night-hang-child"


def _hang_children():
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if HANG_MARKER.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


@pytest.mark.slow
def test_a_night_in_miniature(night):
    n = night
    good_lrs = {}
    upstream = open(os.path.join(REPO, "train.py")).read()
    for name in ("MATRIX_LR", "EMBEDDING_LR", "UNEMBEDDING_LR", "SCALAR_LR"):
        good_lrs[name] = re.search(rf"^{name}\s*=\s*([0-9.e-]+)", upstream, re.M).group(1)
    base = n.head()

    # 1. setup-session, then the baseline run, logged ------------------------------------
    n.script("setup-session", "--tag", TAG, "--dataset", "classics", "--target", "train.py",
             "--budget", str(BUDGET), "--python", sys.executable)
    assert n.git("rev-parse", "--abbrev-ref", "HEAD") == BRANCH
    (config,) = n.records()
    assert config["type"] == "config" and config["dataset"] == "classics" and config["budget"] == BUDGET
    assert config["base_commit"] == base and config["metric"] == "val_bpb" and config["direction"] == "lower"
    assert set(config["fixed_files"]) >= {"prepare.py", "data_sources.py"}
    assert n.tsv() == (["commit", "val_bpb", "memory_gb", "avg_tok_sec", "status", "description"], [])
    assert n.git("status", "--porcelain") == "", "session files are ignored by git"

    status, decision, out = n.experiment("baseline")
    assert (status, decision) == ("ok", "keep")
    (baseline,) = n.runs()
    assert baseline["run"] == 1 and baseline["status"] == "keep" and baseline["commit_sha"] == base == n.head()
    assert 1.0 < baseline["metric"] < 4.0
    assert f"METRIC val_bpb={baseline['metric']}" in out or "METRIC val_bpb=" in out

    # 2. an edit that improves: the learning rates found beforehand -> kept -------------
    for name, value in good_lrs.items():
        n.set_constant(name, value)
    status, decision, _ = n.experiment("restore the tuned learning rates",
                                       asi={"hypothesis": "LRs 20x too small", "learned": "tuned LRs help"})
    assert (status, decision) == ("ok", "keep")
    improved = n.runs()[-1]
    assert improved["metric"] < baseline["metric"] - 0.05, (baseline["metric"], improved["metric"])
    assert n.head() == improved["commit_sha"] != base, "the branch advanced to the kept change"
    assert n.git("rev-parse", "HEAD~1") == base
    assert n.git("diff", "--name-only", base, "HEAD").split() == ["train.py"]
    assert improved["asi"]["hypothesis"] == "LRs 20x too small"
    kept_text = n.read("train.py")

    # 3. an edit that makes it worse -> discarded, train.py back to the kept version ------
    for name in good_lrs:
        n.set_constant(name, "0.0")
    status, decision, _ = n.experiment("freeze every weight")
    assert (status, decision) == ("ok", "discard")
    worse = n.runs()[-1]
    assert worse["run"] == 3 and worse["metric"] > improved["metric"]
    assert n.head() == improved["commit_sha"] and n.read("train.py") == kept_text
    assert n.git("rev-parse", f"refs/autoresearch/{TAG}/run-3") == worse["commit_sha"] != n.head()

    # 4. an edit that raises -> crash, reverted ----------------------------------------
    n.edit("def main():\n", "def main():\n    raise RuntimeError('shape mismatch in the new attention')\n")
    status, decision, out = n.experiment("new attention variant")
    assert status == "crash" and "shape mismatch in the new attention" in out, "the log tail is shown"
    assert n.runs()[-1]["status"] == "crash" and n.runs()[-1]["metric"] is None
    assert n.head() == improved["commit_sha"] and n.read("train.py") == kept_text

    # 5. an edit that produces NaN -> nan, recorded as a crash, reverted -----------------
    n.set_constant("LOGIT_SOFTCAP", "float('nan')")
    status, decision, out = n.experiment("softcap typo")
    assert status == "nan" and "NaN" in out
    assert n.runs()[-1]["status"] == "crash" and n.runs()[-1]["run_status"] == "nan"
    assert n.read("train.py") == kept_text

    # 6. an edit that hangs -> killed at the timeout with its whole process tree ----------
    n.edit("def main():\n", "def main():\n    import subprocess, time\n"
           f"    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', '{HANG_MARKER}'])\n"
           "    time.sleep(600)\n")
    started = time.time()
    code, out = n.script("run-experiment", "--timeout", "10", ok=False)
    assert code != 0 and re.search(r"^status: timeout", out, re.M), out
    assert time.time() - started < 60
    time.sleep(0.5)
    assert _hang_children() == [], "the child of the hung run was killed too"
    n.script("log-experiment", "--status", "crash", "--description", "data loader rewrite (hangs)")
    assert n.runs()[-1]["run_status"] == "timeout" and n.read("train.py") == kept_text

    # 7. prepare.py: the guard refuses an edit; tampering by other means is caught ---------
    hook = subprocess.run([sys.executable, os.path.join(n.root, "experiment-plugin", "hooks", "guard.py")],
                          input=json.dumps({"session_id": "s", "hook_event_name": "PreToolUse", "cwd": n.root,
                                            "tool_name": "Edit",
                                            "tool_input": {"file_path": os.path.join(n.root, "prepare.py"),
                                                           "old_string": "EVAL_TOKENS", "new_string": "X"}}),
                          capture_output=True, text=True, cwd=n.root, env=n.env)
    decision = json.loads(hook.stdout)["hookSpecificOutput"]
    assert decision["permissionDecision"] == "deny" and "prepare.py" in decision["permissionDecisionReason"]
    before = n.records()
    with open(os.path.join(n.root, "prepare.py"), "a") as f:
        f.write("EVAL_TOKENS = 1024  # a smaller eval would look better\n")
    code, out = n.script("run-experiment", ok=False)
    assert code != 0 and "status: tampered" in out
    assert n.records() == before, "a tampered run is not recorded"
    assert "repair: run resume-session" in out
    n.script("resume-session")
    assert n.git("status", "--porcelain") == "" and "smaller eval" not in n.read("prepare.py")

    # 8. interruption with a dirty tree (and a finished run never logged), then resume ----
    before_refs = n.git("for-each-ref", "--format=%(refname)", f"refs/autoresearch/{TAG}/").split()
    n.set_constant("WARMDOWN_RATIO", "0.9")
    n.script("run-experiment", ok=False)
    n.edit("def main():\n", "def main():\n    pass  # half-written idea\n")
    code, out = n.script("resume-session")
    assert n.git("status", "--porcelain") == "" and n.head() == improved["commit_sha"]
    assert n.read("train.py") == kept_text
    saved = n.git("for-each-ref", "--format=%(refname)", f"refs/autoresearch/{TAG}/")
    interrupted = [r for r in saved.split() if "/interrupted-" in r and r not in before_refs]
    assert len(interrupted) == 1 and "half-written idea" in n.git("show", f"{interrupted[0]}:train.py")
    assert "6 runs logged; next is run 7" in out, out
    assert f"best val_bpb {improved['metric']:.6f} (run 2" in out, out
    assert "never logged" in out, "the unlogged run is set aside, and said so"

    n.set_constant("WARMDOWN_RATIO", "0.6")
    status, decision, _ = n.experiment("longer warmdown")
    assert n.runs()[-1]["run"] == 7 and status == "ok"

    # 9. the morning: summary, plot, confidence -------------------------------------------
    runs = n.runs()
    header, rows = n.tsv()
    assert [r[4] for r in rows] == [r["status"] for r in runs]
    assert [r[0] for r in rows] == [r["commit"][:7] for r in runs]
    assert rows[1][1] == f"{improved['metric']:.6f}"
    n.script("summarize")
    summary = n.read("autoresearch-summary.md")
    best = min((r for r in runs if r["status"] == "keep"), key=lambda r: r["metric"])
    for text in (f"{baseline['metric']:.6f}", f"{best['metric']:.6f}", best["commit"][:7],
                 "restore the tuned learning rates", "new attention variant", "softcap typo",
                 "data loader rewrite (hangs)"):
        assert text in summary, text
    with open(os.path.join(n.root, "progress.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    code, out = n.script("confidence")
    assert re.search(r"likely real|marginal|noise", out), out
    assert n.git("status", "--porcelain") == ""


@pytest.mark.slow
def test_two_iterations_through_the_real_cli_on_the_real_template(night, tmp_path):
    """The real Claude Code CLI, the clone's own plugin, the real train.py on classics.
    A scripted model types what the command and skill say: setup, baseline, an attempt
    to stop (the Stop hook sends it back to work), one edit, run, log by the
    recommendation, and a stop that the iteration cap lets through."""
    claude = require_claude()
    n = night
    plugin = os.path.join(n.root, "experiment-plugin")
    home = tmp_path / "home"
    home.mkdir()
    said = {}

    def result(body):
        (r,) = tool_results(body)
        assert not r["is_error"], r["text"][-2000:]
        return r["text"]

    def setup(body):
        prompt = user_text(body)
        line = re.search(r'^\s*("[^"\n]*/scripts/setup-session" --tag t2 .*)$', prompt, re.M).group(1)
        assert line.startswith(f'"{plugin}/scripts/setup-session"'), "${CLAUDE_PLUGIN_ROOT} is the clone's plugin"
        # strict: one run per step, as this scripted model types them (the noise-aware
        # rule's reruns are followed in test_a_night_in_miniature)
        command = line.replace("[--dataset <dataset>] [options]", f"--dataset classics --budget 5 --max-iterations 2 --target train.py --policy strict")
        return [tool("Bash", command=command, timeout=600000)]

    def baseline(body):
        said["scripts"] = re.search(r"^scripts: (.+)$", result(body), re.M).group(1)
        return [tool("Bash", command=f'"{said["scripts"]}/run-experiment"', timeout=600000)]

    def log_run(description):
        def step(body):
            out = result(body) if "status: ok" in tool_results(body)[0]["text"] else tool_results(body)[0]["text"]
            return log_as_recommended(said["scripts"], out, description, said.setdefault("decisions", []))
        return step

    def stop(body):
        assert "logged run 1: keep" in result(body)
        return [text("Baseline recorded.")]

    def read(body):
        assert "Stop hook feedback" in user_text(body) and "run 2" in user_text(body)
        return [tool("Read", file_path=os.path.join(n.root, "train.py"))]

    def edit(body):
        line = re.search(r"MATRIX_LR = [0-9.e-]+", result(body)).group(0)
        said["edit"] = line
        return [tool("Edit", file_path=os.path.join(n.root, "train.py"), old_string=line,
                     new_string="MATRIX_LR = 0.04")]

    def run(body):
        result(body)
        return [tool("Bash", command=f'"{said["scripts"]}/run-experiment"', timeout=600000)]

    def done(body):
        out = result(body)
        assert "logged run 2" in out and "iteration cap reached" in out, out
        return [text("Iteration cap reached; stopping.")]

    steps = [setup, baseline, log_run("baseline"), stop, read, edit, run, log_run("Muon LR 0.04"), done]
    with ScriptedModel(steps) as model:
        proc = subprocess.run([claude, "-p", "/experiment:model t2 classics --budget 5 --max-iterations 2",
                               "--plugin-dir", plugin, "--output-format", "stream-json", "--verbose"],
                              cwd=n.root, capture_output=True, text=True, timeout=600,
                              env=model.client_env(str(home), **{k: n.env[k] for k in
                                                                 ("PATH", "AUTORESEARCH_CACHE", "AUTORESEARCH_QUIET",
                                                                  "AUTORESEARCH_LOAD_CHECK", "AUTORESEARCH_EVAL_TOKENS")}))
    assert model.errors == [], model.errors
    assert model.finished, f"stopped after {model.step} of {len(steps)} steps:\n{proc.stdout[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = n.runs()
    assert [r["run"] for r in runs] == [1, 2] and [r["status"] for r in runs] == said["decisions"]
    assert all(1.0 < r["metric"] < 4.0 for r in runs), runs
    kept = [r for r in runs if r["status"] == "keep"]
    assert n.head() == kept[-1]["commit_sha"] and n.git("status", "--porcelain") == ""
    assert ("MATRIX_LR = 0.04" in n.read("train.py")) == (runs[1]["status"] == "keep")
