"""What kind of project a session runs in, and how its runs reach the training script.

Three kinds, one loop:
  harness    this project's fixed harness (prepare.py with --dataset/--verify and
             data_sources.py): the harness measures val_bpb on its result channel.
  karpathy   a clone of karpathy/autoresearch or a port of it (its prepare.py with
             TIME_BUDGET and evaluate_bpb, a train.py that imports them): val_bpb,
             lower is better, read from the run's printed summary block.
  own        any other git repository with a training script: the metric it prints,
             the command that runs it, its own data.

Only the harness reads AUTORESEARCH_DATASET; a script reads the budget and the seed
only if it asks for them (AUTORESEARCH_TIME_BUDGET, AUTORESEARCH_SEED). This module
finds out which, so that setup can say what reaches the run and what does not.
"""
from __future__ import annotations

import os
import re
import shlex

from .common import PLOT, PLOT_TRACKED
from .git import git

HARNESS, KARPATHY, OWN = "harness", "karpathy", "own"
KIND_NAMES = {HARNESS: "this project's harness",
              KARPATHY: "a karpathy/autoresearch clone",
              OWN: "your own training repository"}
BUDGET_ENV = "AUTORESEARCH_TIME_BUDGET"
# A budget counts seconds by default. A project of one's own on a shared machine, where
# the clock is noise, can count steps or tokens instead (setup-session --budget-unit):
# each unit reaches the script through its own variable. Not the harness: its seconds
# are on the runner's clock, a count would be the template's own word.
BUDGET_UNITS = {"seconds": BUDGET_ENV, "steps": "AUTORESEARCH_STEP_BUDGET",
                "tokens": "AUTORESEARCH_TOKEN_BUDGET"}
SEED_ENV = "AUTORESEARCH_SEED"

# karpathy/autoresearch keeps its data and tokenizer in ~/.cache/autoresearch/ (its
# prepare.py's CACHE_DIR): the validation shard is pinned, the tokenizer is trained once.
KARPATHY_DATA_CHECK = ('test -f "$HOME/.cache/autoresearch/tokenizer/tokenizer.pkl" && '
                       'test -f "$HOME/.cache/autoresearch/data/shard_06542.parquet"')
KARPATHY_PREPARE = "uv run prepare.py"

# Metric names that are better when higher; anything else defaults to lower.
HIGHER = re.compile(r"acc|accuracy|f1|auc|score|reward|precision|recall|bleu|rouge|map|"
                    r"win|success|throughput|tok_sec|mfu", re.IGNORECASE)


def text(root: str, name: str) -> str:
    try:
        with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def kind(root: str, target: str) -> str:
    prepare = text(root, "prepare.py")
    if prepare and os.path.isfile(os.path.join(root, "data_sources.py")) and "--verify" in prepare:
        return HARNESS
    code = text(root, target)
    if ("TIME_BUDGET" in prepare and "evaluate_bpb" in prepare
            and re.search(r"^\s*from\s+prepare\s+import", code, re.MULTILINE)):
        return KARPATHY
    return OWN


def uses_uv(root: str) -> bool:
    """A project managed by uv: a uv.lock, or a [tool.uv] table in pyproject.toml."""
    return (os.path.isfile(os.path.join(root, "uv.lock"))
            or "[tool.uv" in text(root, "pyproject.toml"))


def default_run(root: str, target: str, python: str) -> str:
    """How the person would start the script: `uv run` where uv manages the project,
    else the project's interpreter on it; as a module (`-m pkg.train`) where it is
    part of a package and imports from it."""
    module = package_module(root, target)
    if module:
        return (f"uv run python -m {module}" if uses_uv(root)
                else f"{shlex.quote(python)} -m {module}")
    if uses_uv(root):
        return f"uv run {shlex.quote(target)}"
    return f"{shlex.quote(python)} {shlex.quote(target)}"


def package_module(root: str, target: str):
    """A script inside a package that imports from it (`from .model import GPT`, or
    `from pkg.model import GPT`) fails as `python pkg/train.py` with
    ModuleNotFoundError: Python puts pkg/ on the path, not the folder above it. Run
    as a module from the project root it works. Returns the module's name
    (pkg.train) where that is the way, False where the package does not start at the
    root (then no default works), None for a plain script."""
    folder, parts = os.path.dirname(target), [os.path.splitext(os.path.basename(target))[0]]
    while folder and os.path.isfile(os.path.join(root, folder, "__init__.py")):
        parts.insert(0, os.path.basename(folder))
        folder = os.path.dirname(folder)
    if len(parts) == 1:
        return None
    top = re.escape(parts[0])
    imports = re.search(rf"^\s*from\s+(\.|{top}\b)|^\s*import\s+{top}\b", text(root, target),
                        re.MULTILINE)
    if not imports:
        return None
    return ".".join(parts) if not folder else False


PACKAGE_ADVICE = ("{target} imports from its own package, so `python {target}` fails with "
                  "ModuleNotFoundError: pass --run with the command that works from the "
                  "project root, e.g. --run 'python -m <package>.<module>' with the package "
                  "installed (pip install -e .)")


def target_advice(root: str) -> str:
    """What to pass for a missing target: this project's templates where they are,
    else the repository's own scripts that look like training (a main guard, a
    backward pass, a fit), the likeliest first."""
    if os.path.isfile(os.path.join(root, "train_mlx.py")) or os.path.isfile(
            os.path.join(root, "data_sources.py")):
        return "pass --target train.py or --target train_mlx.py"
    found = []
    for name in git(root, "ls-files", "--", "*.py").splitlines():
        code = text(root, name)
        score = (bool(re.search(r"__name__\s*==\s*['\"]__main__", code))
                 + bool(re.search(r"\.backward\(|\.step\(\)|\.fit\(|\.train\(\)", code))
                 + ("train" in os.path.basename(name)))
        if score >= 2:
            found.append((-score, name.count("/"), name))
    names = [n for _, _, n in sorted(found)[:3]]
    if not names:
        return ("pass --target with the path of the script that trains, relative to the "
                "project root")
    return "pass --target with the script that trains: " + " or ".join(
        f"--target {shlex.quote(n)}" for n in names)


def reads(root: str, files, name: str) -> bool:
    """Whether any of `files` mentions `name` (an environment variable it reads, a
    metric it prints)."""
    return any(name in text(root, f) for f in files)


def budget_constant(root: str, files) -> float | None:
    """A script's own fixed budget: `TIME_BUDGET = 300` in prepare.py or the target."""
    for f in ("prepare.py", *files):
        m = re.search(r"^TIME_BUDGET\s*=\s*([0-9][0-9_.]*)", text(root, f), re.MULTILINE)
        if m:
            return float(m.group(1).replace("_", ""))
    return None


def default_direction(metric: str) -> str:
    return "higher" if HIGHER.search(metric) and "loss" not in metric and "bpb" not in metric \
        else "lower"


def framework(root: str, target: str, project_kind: str) -> str | None:
    """The framework the target imports, read from its text (never imported here);
    in this project's harness, a template that imports none is taken for its kind."""
    code = text(root, target)
    for name in ("mlx", "torch", "jax", "tensorflow", "keras", "sklearn"):
        if re.search(rf"^\s*(import|from)\s+{name}\b", code, re.MULTILINE):
            return {"sklearn": "scikit-learn"}.get(name, name)
    if project_kind == HARNESS:
        return "mlx" if "mlx" in os.path.basename(target) else "torch"
    return None


# What setup says to add where the budget or the seed cannot reach a script.
BUDGET_SNIPPET = (f"`budget = float(os.environ.get('{BUDGET_ENV}', 300))` before the loop, "
                  "`if time.time() - t0 > budget: break` in it (or count its iterations: "
                  "`max_iters = int(os.environ.get('AUTORESEARCH_STEP_BUDGET', 5000))` with "
                  "--budget-unit steps --budget 2000)")


def budget_unit(config: dict) -> str:
    return config.get("budget_unit") or "seconds"


def budget_env(config: dict) -> str:
    """The variable that carries a run's budget to the script."""
    return BUDGET_UNITS[budget_unit(config)]


def run_vars(config: dict, seed: int) -> dict:
    """What every run of a session is given, wherever it runs (here, a worker, a Slurm
    job): the dataset and the cache the session was pinned on (whatever
    AUTORESEARCH_CACHE the caller has), the budget, the seed, unbuffered output."""
    out = {"AUTORESEARCH_DATASET": config["dataset"], **budget_vars(config),
           "AUTORESEARCH_SEED": str(seed), "PYTHONUNBUFFERED": "1"}
    if (config.get("eval") or {}).get("cache_dir"):
        out["AUTORESEARCH_CACHE"] = os.path.dirname(config["eval"]["cache_dir"])
    return out


def budget_vars(config: dict) -> dict:
    """The run's budget variable, none where the script enforces its own (a cap from
    here would cut it short)."""
    if config.get("budget_via") == "script":
        return {}
    unit = budget_unit(config)
    return {BUDGET_UNITS[unit]: f"{config['budget']:g}" if unit == "seconds" else str(int(config["budget"]))}


def budget_text(config: dict) -> str:
    """The budget as a person reads it: `300 s`, `2,000 steps`, `1,000,000 tokens`."""
    unit = budget_unit(config)
    return f"{config['budget']:g} s" if unit == "seconds" else f"{int(config['budget']):,} {unit}"


def count_snippet(unit: str) -> str:
    """What a script adds to take a step or token budget from the environment."""
    name = "max_iters" if unit == "steps" else "max_tokens"
    return (f"`{name} = int(os.environ.get('{BUDGET_UNITS[unit]}', {name}))` before the loop, "
            f"and the loop stops there")


SEEDERS = {"torch": "torch.manual_seed(seed)", "jax": "key = jax.random.PRNGKey(seed)",
           "tensorflow": "tf.keras.utils.set_random_seed(seed)",
           "keras": "keras.utils.set_random_seed(seed)", "mlx": "mx.random.seed(seed)",
           "scikit-learn": "np.random.seed(seed), and random_state=seed wherever it is passed"}


def seed_snippet(framework: str | None) -> str:
    return (f"`seed = int(os.environ.get('{SEED_ENV}', 0))`, then "
            f"`{SEEDERS.get(framework, 'random.seed(seed); np.random.seed(seed)')}`")


def plot_name(root: str) -> str:
    """progress.png, unless the person's repository tracks a file of that name (a
    karpathy/autoresearch clone commits one): then the plot goes beside it, under
    another name, and theirs is never touched."""
    return PLOT_TRACKED if git(root, "ls-files", "--", PLOT) else PLOT


def plot_of(config: dict) -> str:
    return config.get("plot") or PLOT
