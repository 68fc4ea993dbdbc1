#!/usr/bin/env python3
"""Start an experiment session: branch, config, fixed-file hashes, results files.

Works in three kinds of project (the research config names which):
  this project's harness   prepare.py --dataset D, measured by the harness (val_bpb);
  a karpathy/autoresearch clone (or a port): `uv run train.py`, prepare.py read-only,
  val_bpb lower, its ~/.cache/autoresearch/ as the data check, its TIME_BUDGET;
  your own repository      --run "CMD" (default `uv run <target>` in a uv project,
  else the project's python on the target; `python -m pkg.module` for a script
  inside a package), --metric NAME --direction lower|higher (the name it prints as
  `name: value` after `---`, or `METRIC name=value`, or in a shape setup knows:
  `val loss X`, `val_loss=X`, `'val_loss': X`, Hugging Face's Trainer, Keras,
  Lightning; then setup reads it with a --metric-pattern it proposes),
  --data-check "CMD" (or none).
The budget reaches a run as AUTORESEARCH_TIME_BUDGET where the script reads it;
otherwise the script enforces its own and --budget sets only the timeout. On a
shared machine, where the clock is noise, --budget-unit steps or tokens makes --budget
a count that reaches it as AUTORESEARCH_STEP_BUDGET or AUTORESEARCH_TOKEN_BUDGET. Likewise
AUTORESEARCH_SEED: a script that sets its own seed repeats itself, so its noise is
not estimated from repeats.

Checks everything first and changes nothing until all checks pass:
  the tag makes a valid branch name, autoresearch/<tag> does not exist yet (if it
  does, continue it with resume-session), the work tree has no uncommitted changes
  to tracked files, the target exists, it prints the metric under its own name
  (not inside a longer one: val_loss is not best_val_loss), the run command's
  program exists, the data check passes (the harness's is `prepare.py --dataset D`
  with --verify; on failure its own last line is shown), and the config validates.
Then it creates the branch (a failure from here on removes it again), writes the config as the first record of
autoresearch.jsonl, the results.tsv header and autoresearch.md, and switches the
guard and loop hooks on. A previous session's files are moved to
.autoresearch/archive/ first, never overwritten; its torch.compile cache
(.autoresearch/compile-cache/, which only ever holds compiled kernels) is deleted.

Running it again with the same tag right after setup (no runs logged) only reports
that the session is ready.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, git, templates, harness, agent_sandbox, parsing, project, devices, measure, records, policy, session, sandbox, skypilot, slurm  # noqa: E402

TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

NOTES_TEMPLATE = """# autoresearch session {tag}

Branch `{branch}`, target `{target}`, dataset `{dataset}`, {budget_shown} per run,
metric `{metric}` ({direction} is better), keep policy `{policy}`.

This is the living document of the session: keep it current so that anyone (or a
resumed session) can pick up from here. The numbers live in autoresearch.jsonl and
results.tsv, written only by the scripts.

## Goal

## What has been tried (and what it taught)

## Ideas queue

## Dead ends (do not retry)
"""


def default_target(root):
    """MLX on Apple Silicon, PyTorch everywhere else."""
    if devices.apple_silicon() and os.path.exists(os.path.join(root, "train_mlx.py")):
        return "train_mlx.py"
    return "train.py"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="setup-session", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", required=True, help="session name; the branch is autoresearch/<tag>")
    p.add_argument("--dataset",
                   help="this project's harness: climbmix | tinystories | classics | local:<path> "
                        "(default climbmix); another project uses its own data")
    p.add_argument("--run", metavar="CMD",
                   help="a project of your own: the shell command that runs one training, from "
                        "the project root (default: uv run <target> where uv manages the project, "
                        "else the project's python on the target)")
    p.add_argument("--holdout", metavar="CMD",
                   help="a project of your own: a shell command that prints the metric on data the "
                        "loop never sees (a test split); the files it names are read-only for the "
                        "session, and it runs only after the session ends (summarize --test, finalize)")
    p.add_argument("--data-check", metavar="CMD",
                   help="a project of your own: a shell command that exits 0 when the data is "
                        "ready (default: none; a karpathy/autoresearch clone: its cache folder); "
                        "'none' for no check")
    p.add_argument("--budget-via", choices=["env", "script"],
                   help="how the budget reaches a run: env (the script reads "
                        "AUTORESEARCH_TIME_BUDGET) or script (it enforces its own; --budget then "
                        "sets only the timeout). Default: env where the script reads the variable")
    p.add_argument("--target", help="the template to edit (default: train_mlx.py on Apple "
                                    "Silicon, train.py elsewhere)")
    p.add_argument("--budget", type=float, help="training seconds per run (default 300, or the "
                                                  "script's own TIME_BUDGET)")
    p.add_argument("--budget-unit", choices=list(project.BUDGET_UNITS),
                   help="a project of your own: what --budget counts. steps or tokens reach the "
                        "script as AUTORESEARCH_STEP_BUDGET or AUTORESEARCH_TOKEN_BUDGET; runs are "
                        "then equal whatever the machine's speed, and need --timeout (default seconds)")
    p.add_argument("--timeout", type=float,
                   help="kill a run after this many seconds (default 2 x budget + 120)")
    p.add_argument("--metric", help="metric to optimise, as the run prints it (default val_bpb, "
                                    "or the name of --metric-pattern's group)")
    p.add_argument("--metric-pattern", metavar="REGEX",
                   help="read the metric from the run's output with this regular expression: "
                        "its last match is the result, from the group named after the metric "
                        "(or `value`), else the first group, e.g. 'val loss ([0-9.]+)' "
                        "(default: the summary block, or a pattern setup proposes from the "
                        "target's print statements)")
    p.add_argument("--direction", choices=["lower", "higher"],
                   help="which way is better (default lower; higher for names like acc, f1, "
                        "score, reward)")
    p.add_argument("--max-iterations", type=int,
                   help="stop the loop after this many logged runs, baseline included "
                        "(default: no limit)")
    p.add_argument("--policy", default=policy.DEFAULT_POLICY,
                   help="keep policy: noise-aware (default: a change must beat the measured "
                        "noise, marginal ones are confirmed on a new seed) | strict (keep any "
                        "improvement) | quality-speed (val_bpb and throughput together)")
    p.add_argument("--baseline-runs", type=int, default=None,
                   help="runs of the unchanged baseline, on new seeds, that measure the noise "
                        f"before the first change (default {policy.DEFAULT_BASELINE_RUNS} under "
                        "noise-aware, else 1)")
    p.add_argument("--scope", action="append", default=[], metavar="FILES",
                   help="further files the agent may edit besides the target, comma-separated "
                        "(committed and reverted with it)")
    p.add_argument("--read-only", action="append", default=[], metavar="FILES",
                   help="further fixed files, comma-separated: hashed and guarded like the harness")
    p.add_argument("--checks", metavar="CMD",
                   help="a shell command run after every ok run (tests, a lint); when it "
                        "fails the run is checks_failed and never kept")
    p.add_argument("--progress-every", type=int, default=session.PROGRESS_EVERY, metavar="N",
                   help=f"a progress report every N runs, printed and kept in autoresearch.md "
                        f"(default {session.PROGRESS_EVERY}; 0: none)")
    p.add_argument("--target-value", type=float, metavar="V",
                   help="end the session once the best result reaches V")
    p.add_argument("--plateau", type=int, default=session.PLATEAU_DEFAULT, metavar="N",
                   help=f"end the session after N runs in a row without a keep (default "
                        f"{session.PLATEAU_DEFAULT}; at N/2 the agent is told to change category; "
                        "0: never)")
    p.add_argument("--workers", type=int, default=1, metavar="W",
                   help="candidates run at once (default 1: one run at a time, as always). Local: "
                        "one per GPU, or disjoint CPU cores each; see new-candidate, submit-wave")
    p.add_argument("--backend", default="local", choices=devices.BACKENDS,
                   help="where candidates run: local (default), skypilot (jobs on a cluster pool) "
                        "or slurm (each candidate an sbatch job; run setup on the login node)")
    p.add_argument("--clusters", type=int, metavar="N",
                   help="skypilot: clusters in the pool, reused across waves (default: --workers)")
    p.add_argument("--accelerators", metavar="GPU:N",
                   help="skypilot: accelerators per job, e.g. H100:1 (default: the task YAML's)")
    p.add_argument("--managed", action="store_true",
                   help="skypilot: run each candidate as a managed job (sky jobs launch) instead")
    p.add_argument("--gres", metavar="GRES",
                   help="slurm: generic resources per job, e.g. gpu:1 (sbatch --gres)")
    p.add_argument("--cpus-per-task", type=int, metavar="N",
                   help="slurm: CPUs per job (sbatch --cpus-per-task; the thread variables follow)")
    p.add_argument("--partition", metavar="P", help="slurm: the partition jobs go to (default: the cluster's)")
    p.add_argument("--init", action="store_true",
                   help="a directory with no training code: copy this project's harness and "
                        "templates into it (git init first where it is no repository), commit "
                        "them as the session's base, then set up as usual")
    p.add_argument("--no-load-check", dest="load_check", action="store_false",
                   help="a shared machine: judge every run whatever else the machine runs "
                        "(by default a run beside other load is set apart and run again)")
    p.add_argument("--network", action="store_true",
                   help="let runs reach the network (default: none; the run's sandbox cuts it)")
    p.add_argument("--writable", action="append", default=[], metavar="DIRS",
                   help="further folders a run may write, comma-separated (default: data/ of this "
                        "project's harness; a project of your own: all of it but .git, the records, "
                        "the target and the fixed files; there also folders outside it, e.g. ~/.cache/huggingface)")
    p.add_argument("--python", help="interpreter for runs (default: the project's .venv, else the "
                                    "one running this script)")
    a = p.parse_args(argv)
    a.scope, a.read_only, a.writable = file_list(a.scope), file_list(a.read_only), file_list(a.writable)
    return a


def file_list(values):
    """`--scope a.py,b.py --scope c.py` -> [a.py, b.py, c.py], normalised, no repeats."""
    out = []
    for v in values:
        for name in v.split(","):
            name = os.path.normpath(name.strip()) if name.strip() else ""
            if name and name not in out:
                out.append(name)
    return out


def check_args(a):
    if not TAG.match(a.tag) or a.tag.endswith(".lock") or ".." in a.tag:
        raise common.UserError(f"invalid tag {a.tag!r}: use letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit (e.g. mar5)")
    if (a.budget is not None and a.budget <= 0) or (a.timeout is not None and a.timeout <= 0):
        raise common.UserError("--budget and --timeout must be positive numbers of seconds")
    if a.budget_unit not in (None, "seconds"):
        if a.budget is None or a.budget != int(a.budget) or a.timeout is None:
            raise common.UserError(f"--budget-unit {a.budget_unit} needs --budget N, a whole number of "
                                   f"{a.budget_unit} per run, and --timeout S, the seconds after which a run is killed")
        if a.budget_via == "script":
            raise common.UserError(f"--budget-unit {a.budget_unit} passes the budget to the script: "
                                   "drop --budget-via script")
    if a.max_iterations is not None and a.max_iterations < 1:
        raise common.UserError("--max-iterations must be 1 or more (leave it out for no limit)")
    policy.policy_name({"policy": a.policy})      # an unknown policy: one line, what to use
    if a.baseline_runs is not None and a.baseline_runs < 1:
        raise common.UserError("--baseline-runs must be 1 or more (3 measures the noise; 1 skips it)")
    if a.metric_pattern:
        named = [g for g in parsing.check_pattern(a.metric_pattern).groupindex if g != "value"]
        a.metric = a.metric or (named[0] if named else None)
    a.metric = a.metric or "val_bpb"
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", a.metric):
        raise common.UserError(f"invalid metric name {a.metric!r}: use a name like val_bpb")
    if a.progress_every < 0:
        raise common.UserError("--progress-every must be 0 (none) or a number of runs")
    if a.plateau < 0:
        raise common.UserError("--plateau must be 0 (never) or a number of runs")
    if a.backend != "skypilot" and (a.clusters or a.accelerators or a.managed):
        raise common.UserError("--clusters, --accelerators and --managed are for --backend skypilot")
    if a.backend != "slurm" and (a.gres or a.cpus_per_task or a.partition):
        raise common.UserError("--gres, --cpus-per-task and --partition are for --backend slurm")
    if a.cpus_per_task is not None and a.cpus_per_task < 1:
        raise common.UserError("--cpus-per-task must be 1 or more")
    if a.clusters is not None and a.clusters < 1:
        raise common.UserError("--clusters must be 1 or more")
    a.worker_note = devices.check_workers(a.workers, a.backend)
    if a.backend == "skypilot":
        skypilot.sky_bin()         # installed, or one line saying how
    if a.backend == "slurm":
        slurm.slurm_bin("sbatch")  # on the login node, or one line saying where to run


def check_files(root, target, a):
    """Scope files must be tracked and editable; read-only ones must exist; no file may
    be both, and the target and the harness are neither."""
    fixed = set(harness.fixed_file_list(root))
    for name in a.scope:
        if name == target or name in fixed or name in a.read_only:
            raise common.UserError(f"--scope {name}: it is the target, a fixed file or read-only; "
                                "name only further files the agent may edit")
        if git.git(root, "ls-files", "--", name) == "":
            raise common.UserError(f"--scope {name} is not a file tracked by git: commit it first")
    for name in a.read_only:
        if not os.path.isfile(os.path.join(root, name)) or name == target:
            raise common.UserError(f"--read-only {name}: no such file (or it is the target): name "
                                "files that exist, relative to the project root")
    for name in holdout_files(root, a.holdout):
        # What scores the test split is out of the loop's reach (the code it scores, the
        # target and the scope, is the loop's to change).
        if name != target and name not in a.scope and name not in a.read_only:
            a.read_only.append(name)


def holdout_files(root, command):
    """The project's files a --holdout command names (its script, its data), as paths
    relative to the project root."""
    try:
        words = shlex.split(command or "")
    except ValueError:
        raise common.UserError(f"--holdout {command!r} is not a shell command: check its quotes") from None
    out = []
    for word in words:
        path = os.path.normpath(os.path.join(root, word.split("=", 1)[-1]))
        rel = os.path.relpath(path, root)
        if os.path.isfile(path) and not rel.startswith("..") and rel not in out:
            out.append(rel)
    return out


def plan(root, target, a):
    """What kind of project this is and how its runs go: the config's fields for the
    run command, data, budget, seeds and what is off, and the notes setup prints.
    Nothing here changes anything."""
    kind = project.kind(root, target)
    python = a.python or common.project_python(root)
    framework = project.framework(root, target, kind)
    files = [target, *a.scope]
    notes, off = [], []
    p = {"project": kind, "python": python, "run": None, "budget_via": "env", "seeds": True,
         "metric": a.metric, "direction": a.direction or project.default_direction(a.metric)}
    if kind == project.HARNESS:
        if a.budget_unit not in (None, "seconds"):
            raise common.UserError(f"--budget-unit {a.budget_unit} is for a project of your own: the "
                                   "harness's budget is seconds on the runner's clock, where a template "
                                   "cannot misreport it; on a shared machine pass --no-load-check instead")
        if a.run:
            raise common.UserError("--run is for a project of your own: here runs start through "
                                   "the harness (python <target>); drop --run")
        if a.holdout:
            raise common.UserError("--holdout is for a project of your own: the harness has its own "
                                   "sealed test split; drop --holdout")
        p.update(dataset=a.dataset or "climbmix", budget=a.budget or 300,
                 data_check=f"{shlex.quote(python)} prepare.py --dataset {shlex.quote(a.dataset or 'climbmix')} --verify")
        if a.data_check:
            raise common.UserError("--data-check is for a project of your own: here the harness "
                                   "checks its dataset (--dataset); drop --data-check")
        if a.metric_pattern:
            raise common.UserError("--metric-pattern is for a project of your own: here the "
                                   "harness measures and prints the metric; drop --metric-pattern")
        return p, notes
    if a.dataset:
        notes.append(f"note: --dataset {a.dataset} is for this project's harness; this project "
                     "uses its own data")
    p["dataset"] = "climbmix (its prepare.py)" if kind == project.KARPATHY else "the project's own"
    p["run"] = a.run or project.default_run(root, target, python)
    p["holdout"] = a.holdout
    if not a.run and project.package_module(root, target) is False:
        raise common.UserError(project.PACKAGE_ADVICE.format(target=target))
    program = run_program(p["run"])
    if not (shutil.which(program) or os.path.exists(os.path.join(root, program))):
        raise common.UserError(f"{program or 'the run command'} not found (from --run {p['run']!r}): "
                               + ("install uv, or pass --run 'python " + target + "'"
                                  if program == "uv" else "pass --run with a command that exists"))
    check = a.data_check or (project.KARPATHY_DATA_CHECK if kind == project.KARPATHY else None)
    p["data_check"] = None if (check or "").strip().lower() == "none" else check
    plan_budget(root, files, target, a, p, notes)
    p["seeds"] = project.reads(root, files, project.SEED_ENV)
    if not p["seeds"]:
        notes.append(f"note: {target} does not read {project.SEED_ENV}: seeds are not varied, so "
                     "repeats cannot measure the noise; each change is judged on one run. To vary "
                     f"them, seed from it after any other seeding: {project.seed_snippet(framework)}")
    p["metric_pattern"], note = metric_source(root, files, target, a, framework)
    if note:
        notes.append(note)
    off.append("the harness's result channel (the metric is read from the run's printed output, "
               "which the target writes)")
    if a.metric.endswith("bpb") and kind == project.OWN:
        off.append("the pinned evaluation (no fixed harness here)")
    off.append("bench.py (this project's harness has it)")
    p["off"] = off
    return p, notes


def plan_budget(root, files, target, a, p, notes):
    """How the budget reaches a script of one's own: a count of steps or tokens, seconds
    through the environment where the script reads them, or the script's own."""
    if a.budget_unit not in (None, "seconds"):
        env = project.BUDGET_UNITS[a.budget_unit]
        if not project.reads(root, files, env):
            raise common.UserError(f"{target} never reads {env}: take its {a.budget_unit} from it "
                                   f"({project.count_snippet(a.budget_unit)}), or leave out --budget-unit")
        p.update(budget=int(a.budget), budget_unit=a.budget_unit, load_check=False)
        notes.append(f"note: the budget counts {a.budget_unit}: a change that runs faster gains nothing, "
                     "so speed is no longer rewarded, and the machine's load is not checked")
        return
    # The budget: through the environment where the script reads it, else its own.
    reads_budget = project.reads(root, files, project.BUDGET_ENV)
    own = project.budget_constant(root, files)
    if a.budget_via == "env" and not reads_budget:
        raise common.UserError(f"{target} never reads {project.BUDGET_ENV}: make it stop its "
                               f"loop on time ({project.BUDGET_SNIPPET}), or pass --budget-via script")
    p["budget_via"] = a.budget_via or ("env" if reads_budget else "script")
    if p["budget_via"] == "script":
        p["budget"] = own or a.budget or 300
        if a.budget and own and a.budget != own:
            notes.append(f"note: the script enforces its own budget (TIME_BUDGET = {own:g}); "
                         f"--budget {a.budget:g} cannot reach it: runs get {own:g} s, and the "
                         "timeout is set from that")
        elif reads_budget:
            # Asked for its own budget: runs do not get the variable, so the script's
            # own default (its iteration count, say) decides, not a time cap from here.
            notes.append(f"note: --budget-via script: runs do not get {project.BUDGET_ENV}, so "
                         f"{target} trains by its own default, and {p['budget']:g} s only sets "
                         "the timeout")
        elif not own:
            notes.append(f"note: {target} does not read {project.BUDGET_ENV}: it enforces its own "
                         f"budget, and {p['budget']:g} s only sets the timeout. To let --budget "
                         f"reach it, stop its loop on time: {project.BUDGET_SNIPPET}")
    else:
        p["budget"] = a.budget or 300


def metric_source(root, files, target, a, framework):
    """(pattern, note) for reading the metric from the run's output: the person's
    --metric-pattern, or one proposed from how the target prints the metric, or none
    where it prints the summary block or METRIC lines. Refuses a metric it never
    prints under its own name (val_loss inside best_val_loss is not val_loss)."""
    if a.metric_pattern:
        return a.metric_pattern, None
    code = "\n".join(project.text(root, f) for f in files)
    if not parsing.printed(code, a.metric, framework):
        inside = sorted(set(re.findall(rf"\w*{re.escape(a.metric)}\w*", code)) - {a.metric})
        where = f" (only inside {', '.join(inside[:3])})" if inside else ""
        raise common.UserError(f"{target} never prints {a.metric}{where}: print `{a.metric}: "
                               f"<value>` after a `---` line (or `METRIC {a.metric}=<value>`), "
                               "pass --metric with the name it prints, or --metric-pattern with a "
                               "group around the number, e.g. 'val loss ([0-9.]+)'")
    proposed = parsing.propose_pattern(code, a.metric, framework)
    if not proposed:
        return None, None
    shape, pattern = proposed
    return pattern, (f"metric: {target} prints {shape}: read by the pattern in the research "
                     "config, its last match in a run's output (--metric-pattern REGEX reads it "
                     "otherwise)")


def run_program(run):
    """The program a run command starts: its first word after any `NAME=value`."""
    return next((w for w in shlex.split(run) if not re.match(r"^\w+=", w)), "")


def platform(root, plan, framework):
    """devices.platform_info, with the framework's version read from the interpreter that
    runs: the one the run command names (`python3 train.py`, `.venv/bin/python -m ...`)
    before the project's; where none has it yet (uv installs on the first run), the
    version uv.lock pins."""
    python = plan["python"]
    program = run_program(plan.get("run") or "")
    if re.match(r"python[0-9.]*$", os.path.basename(program)):
        python = shutil.which(program) or os.path.join(root, program)
    info = devices.platform_info(python, framework)
    if framework and info.get("framework", "(version unknown)").endswith("(version unknown)"):
        m = re.search(rf'^name = "{re.escape(framework)}"\nversion = "([^"]+)"',
                      project.text(root, "uv.lock"), re.MULTILINE)
        if m:
            info["framework"] = f"{framework} {m.group(1)} (pinned in uv.lock)"
    return info


INIT_IGNORE = "# run outputs and environments\ndata/\n.venv/\n__pycache__/\n"
INIT_README = """# {name}

Training experiments run overnight by autoresearch: `prepare.py` and its data are the
fixed harness, `train.py` (PyTorch) and `train_mlx.py` (MLX) the templates the agent edits.
`python prepare.py --dataset classics` prepares the embedded data offline.
"""


def init_project(start):
    """setup --init: the harness and templates copied into a project that has no
    training code, committed as one commit the session starts from."""
    try:
        root = common.find_root(start)
    except common.UserError:
        root = os.path.abspath(start)
        git.git(root, "init", "-q")
    for name in ("train.py", "train_mlx.py", "prepare.py"):
        if os.path.exists(os.path.join(root, name)):
            raise common.UserError(f"--init: {name} is already here: set up this project as it is "
                                   "(drop --init)")
    if git.tracked_changes(root):
        raise common.UserError("--init: uncommitted changes here: commit or stash them first")
    copied = templates.copy_templates(root)
    extra = {".gitignore": INIT_IGNORE, "README.md": INIT_README.format(name=os.path.basename(root))}
    for name, body in extra.items():
        if not os.path.exists(os.path.join(root, name)):
            common.write_atomic(os.path.join(root, name), body)
            copied.append(name)
    git.git(root, "add", "--", *copied)
    git.git(root, "commit", "--no-verify", "-q", "-m",
            "The autoresearch harness and templates, as the session's base", "--", *copied,
            env=git.git_identity_env(root))
    print(f"copied the harness and templates into {root} ({len(copied)} files) and committed them")
    return root


def check_data(root, p):
    """The project's data check (the harness's --verify, a clone's cache, a command of
    the person's); on failure, its own last line and the fix."""
    if not p.get("data_check"):
        return
    proc = subprocess.run(p["data_check"], shell=True, cwd=root, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode == 0:
        return
    lines = [l.strip() for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]
    said = lines[-1] if lines else f"exit {proc.returncode}"
    if p["project"] == project.HARNESS:
        # prepare.py prints one line holding the exact command; pass that command on.
        found = re.search(r"python[\w.]* prepare\.py [^`'\"]*", said)
        if found:
            raise common.UserError(f"dataset {p['dataset']!r} is not ready; prepare it with: "
                                   f"{found.group(0).strip()}")
        raise common.UserError(f"the data check failed ({said[:200]}): fix that, then run setup again")
    fix = (f"prepare the data with: {project.KARPATHY_PREPARE}" if p["project"] == project.KARPATHY
           else "prepare the data, or pass --data-check none")
    raise common.UserError(f"the data check `{p['data_check']}` failed ({said[:160]}): {fix}, "
                           "then run setup again")


def drop_compile_caches(root):
    """Delete earlier sessions' torch.compile caches (see runner.compile_cache_env): a
    cache records nothing, and each grows with every run. Returns the MB freed, or
    None if there was none."""
    path = os.path.join(root, common.COMPILE_CACHE)
    if not os.path.isdir(path):
        return None
    size = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                size += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)
    return size / 1e6


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    check_args(a)
    if a.init:      # (the interpreter is chosen first: a re-run must not copy twice)
        common.use_project_python(os.getcwd())
        root = init_project(os.getcwd())
    else:
        root = common.find_root()
        common.use_project_python(root)
    branch = f"autoresearch/{a.tag}"
    redo = None     # the config of this tag's session, set up but with no run logged yet
    if git.branch_exists(root, branch):
        log = records.read_log(root, required=False)
        if (log.config and log.config["tag"] == a.tag and not log.runs
                and git.current_branch(root) == branch):
            # Nothing was measured yet: setting it up again with other settings (--run,
            # --budget-via, the seed handling...) replaces it, once the new ones check out.
            redo = log.config
        else:
                raise common.UserError(f"branch {branch} already exists: continue that session with "
                                   f"/experiment:resume (scripts/resume-session), or pick a new tag")
    target = a.target or default_target(root)
    if not os.path.isfile(os.path.join(root, target)):
        raise common.UserError(f"target {target} not found in {root}: {project.target_advice(root)}")
    if git.git(root, "ls-files", "--", target) == "":
        raise common.UserError(f"target {target} is not tracked by git: commit it first")
    check_files(root, target, a)
    dirty = git.tracked_changes(root)
    if dirty:
        raise common.UserError(f"uncommitted changes in {', '.join(dirty[:5])}: commit or stash "
                            "them first, so the baseline is a commit")
    p, notes = plan(root, target, a)
    python = p["python"]
    if a.backend != "skypilot":     # on SkyPilot each cluster prepares the data in its setup;
                                    # Slurm's nodes share this filesystem, and so the data
        check_data(root, p)
    # Who measures: the harness on its result channel where the harness and the target
    # support it (this project's templates), else the run's printed output.
    measured_by = ("harness" if p["project"] == project.HARNESS and a.metric == "val_bpb"
                   and a.backend == "local" and measure.harness_measures(root, target) else "output")
    pinned = measure.pin_eval(root, python, p["dataset"]) if measured_by == "harness" else None
    rule = policy.policy_name({"policy": a.policy})
    baseline_runs = a.baseline_runs or (policy.DEFAULT_BASELINE_RUNS
                                        if rule == "noise-aware" and p["seeds"] else 1)
    base = git.head(root)
    start = git.current_branch(root) if not redo else (redo.get("start_branch") or "HEAD")
    config = {
        "type": "config", "version": 1, "tag": a.tag, "branch": branch,
        "dataset": p["dataset"], "target": target, "budget": p["budget"],
        "timeout": a.timeout or 2 * p["budget"] + 120, "metric": a.metric,
        "direction": p["direction"], "policy": rule, "baseline_runs": baseline_runs,
        "max_iterations": a.max_iterations,
        "python": python, "base_commit": base, "start_branch": start if start != "HEAD" else None,
        "fixed_files": harness.hash_fixed_files(root, a.read_only), "scope": a.scope,
        "plugin_digest": harness.plugin_digest(common.PLUGIN_ROOT),
        "read_only": a.read_only, "target_value": a.target_value, "plateau": a.plateau,
        "platform": platform(root, p, project.framework(root, target, p["project"])),
        "checks": a.checks, "progress_every": a.progress_every, "created": common.now_iso(),
        "workers": a.workers, "backend": a.backend,
        # seed 001's names for the session's identity and metric, beside ours
        "name": a.tag, "metricName": a.metric, "metricUnit": "bpb" if a.metric.endswith("bpb") else "",
        "bestDirection": p["direction"],
        "project": p["project"], "run": p["run"], "budget_via": p["budget_via"],
        "metric_pattern": p.get("metric_pattern"),
        "seeds": p["seeds"], "data_check": p.get("data_check"), "plot": project.plot_name(root),
    }
    if p.get("holdout"):
        config["holdout"] = p["holdout"]
    if p.get("off"):
        config["off"] = p["off"]
    if not a.load_check or p.get("load_check") is False:
        config["load_check"] = False
    if p.get("budget_unit"):
        config["budget_unit"] = p["budget_unit"]
    config["measure"] = measured_by
    config["sandbox"] = sandbox.session_setting(p["project"], network=a.network, writable=a.writable,
                                                hide_validation=sandbox.harness_serves_validation(root, measured_by))
    if pinned:
        config["eval"] = pinned
    if a.backend == "skypilot":
        config["skypilot"] = {"prefix": f"ar-{a.tag.lower().replace('_', '-').replace('.', '-')}"[:40],
                              "clusters": a.clusters or a.workers, "accelerators": a.accelerators,
                              "managed": a.managed}
    if a.backend == "slurm":
        config["slurm"] = {"prefix": slurm.job_prefix(root, a.tag), "gres": a.gres,
                           "cpus_per_task": a.cpus_per_task, "partition": a.partition}
    records.validate(config, where="config")

    # All checks passed: from here on, change things. A failure on the way takes the
    # branch away again, so that setup can simply be run again.
    if redo:
        replaced, _ = session.discard_unstarted(root)
    git.git(root, "checkout", "-q", "-b", branch)
    try:
        archived = session.archive_files(root)
        freed = drop_compile_caches(root)
        added = git.ensure_ignored(root)
        with common.Lock(root):
            first = (json.dumps(config) + "\n").encode()
            records.back_up_log(root, a.tag, first)      # the copies first, then the log
            common.write_atomic(os.path.join(root, common.LOG), first)
            records.write_results(root, config, [])
            common.write_atomic(os.path.join(root, common.NOTES), NOTES_TEMPLATE.format(
                **config, budget_shown=project.budget_text(config)))
            session.start_loop(root)
        agent_lines = agent_sandbox.apply(root, config)     # the agent's Bash in Claude Code's sandbox
    except BaseException:
        git.git(root, "checkout", "-q", start if start != "HEAD" else base)
        git.git(root, "branch", "-q", "-D", branch)
        raise

    if redo:
        print(f"session {a.tag} had no run logged: set up again with these settings "
              f"(the earlier setup's files are in {replaced}/)")
    elif archived:
        print(f"moved the previous session's files to {archived}/")
    if freed is not None:
        print(f"deleted the earlier sessions' compile cache ({freed:.1f} MB)")
    if added:
        print(f"added {', '.join(added)} to .git/info/exclude so git never touches them")
    print(f"session {a.tag}: branch {branch} at {base[:7]}; guard and loop hooks on")
    print("measured by: " + (f"the harness (its result channel, on {pinned['eval_tokens']:,} "
                             "pinned eval tokens; the target's printed numbers are shown, never "
                             "judged)" if measured_by == "harness" else
                             "the run's printed output (a target can print any number there)"))
    print(session.research_config(config))
    print(f"  {'sandbox':<10} {sandbox.describe(config['sandbox'])}")
    for note in notes:
        print(note)
    print("\n".join(agent_lines))
    if a.worker_note:
        print(a.worker_note)
    if a.workers > 1 or a.backend != "local":
        names = ", ".join(w["name"] for w in devices.workers(config))
        print(f"waves: {a.workers} worker(s) on {a.backend} ({names}); after the baseline, prepare "
              "one candidate per worker (new-candidate), submit-wave, then wait-wave and log each "
              "result as it comes")
    repeats = (f" ({baseline_runs} runs on new seeds to measure the noise: run-experiment "
               "again while it recommends rerun)" if baseline_runs > 1 else "")
    print(f"next: run the baseline (run-experiment){repeats}, then log it: "
          "log-experiment --status keep --description baseline")
    print(f"scripts: {os.path.join(common.PLUGIN_ROOT, 'scripts')}")
    return 0


if __name__ == "__main__":
    common.run_main(main)
