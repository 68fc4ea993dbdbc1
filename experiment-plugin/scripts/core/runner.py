"""Running the target once: in the session's sandbox (see sandbox.py), in its own
process group, with the session's environment, the timeout that kills the whole
group, the load reading around it, the status (ok, crash, nan, timeout,
checks_failed, tampered), and a leftover run stopped.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time

from .common import COMPILE_CACHE, finite, PLUGIN_ROOT, read_json, RUN_LOG, STATE_DIR, UserError, write_atomic
from .harness import changed_fixed_files, plugin_digest, TAMPER_REPAIR
from .parsing import parse_metrics
from .project import run_vars
from .monitor import LoadMonitor
from .measure import allowances, cache_changed, cache_state, check as check_result, pin_from, ServedRun
from . import sandbox

LAUNCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch.py")
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of every orphan among its descendants (Linux): a
    process the run starts in a session of its own leaves the run's process group,
    but when its parent dies it becomes our child, and the sweep below finds it."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int) -> list[int]:
    """The live child processes of `pid`, from /proc (empty where there is none)."""
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != b"Z":
            found.append(int(name))
    return found


def sweep(spared: set[int] = frozenset()) -> int:
    """Kill every descendant of this process that outlived the run's group (a
    subreaper inherits them), until none is left; returns how many were killed."""
    killed = 0
    for _ in range(50):
        found = [p for p in children(os.getpid()) if p not in spared]
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        for pid in found:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        time.sleep(0.05)             # let the next generation be re-parented to us
    return killed


def compile_cache_env(root: str, config: dict, sandboxed: bool = True) -> dict:
    """The environment that gives a run the session's own compile caches.

    torch keeps compiled graphs and kernels in TORCHINDUCTOR_CACHE_DIR; by default
    that is /tmp/torchinductor_<user>, which a container, a batch job's private /tmp
    or a tmp cleaner does not keep between runs, so each run would compile from
    scratch. In the session's folder every run finds what earlier runs compiled: a
    repeat of the same code, or a change the compiled model does not see (the
    optimizer, the schedule), compiles nothing; another change recompiles only what
    changed. Triton's own cache and CUDA's JIT cache go beside it: in a sandbox HOME
    is read-only, and this folder is the one the run may write. A folder the user
    chose is kept only where no sandbox runs: in one, the caller's environment never
    picks a folder the run may write."""
    if not sandboxed and os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return {}
    folder = os.path.join(root, COMPILE_CACHE, config["tag"])
    env = {"TORCHINDUCTOR_CACHE_DIR": folder}
    if sandboxed:
        env.update(TRITON_CACHE_DIR=os.path.join(folder, "triton"), CUDA_CACHE_PATH=os.path.join(folder, "cuda"))
    return env


# A leftover run is found by proof, never by a number read from a file alone: the
# running file records the process's id, its start time (which a reused id does not
# share) and a hash of a random token that only the runner's child holds in its
# environment. A running file that names any other process, however it was written,
# names one whose start time or environment does not match, and nothing is killed.
TOKEN_ENV = "AUTORESEARCH_RUN_TOKEN"


def start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot; `ps` elsewhere), None when it is gone."""
    try:
        if os.path.isdir("/proc"):
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            return stat[stat.rfind(b")") + 2:].split()[19].decode()
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        return out or None
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def holds_token(pid: int, digest: str) -> bool:
    """Whether the environment `pid` started with holds a run token of that hash."""
    try:
        if os.path.isdir("/proc"):
            with open(f"/proc/{pid}/environ", "rb") as f:
                entries = f.read().split(b"\0")
        else:
            out = subprocess.run(["ps", "eww", "-o", "command=", "-p", str(pid)], capture_output=True,
                                 timeout=10).stdout
            entries = out.split()
    except (OSError, subprocess.SubprocessError):
        return False
    prefix = f"{TOKEN_ENV}=".encode()
    return any(hashlib.sha256(e[len(prefix):]).hexdigest() == digest for e in entries if e.startswith(prefix))


def stop_leftover_run(root: str, path: str | None = None) -> str | None:
    """Kill a training run left behind by a run-experiment that was itself killed
    outright (SIGKILL cannot be caught). In bubblewrap there is none to find: the
    sandbox dies with its runner. Unsandboxed, the run lives in its own process
    group; run-experiment records it in .autoresearch/running.json while it runs (a
    wave's worker, in the candidate's own `path`), and the group is killed only when
    the process it names is that run (see start_time, holds_token)."""
    path = path or os.path.join(root, STATE_DIR, "running.json")
    info = read_json(path, default=None)
    if not info:
        return None
    os.unlink(path)
    try:
        pid = int(info["pid"])
        if start_time(pid) != info["start"] or not holds_token(pid, info["token"]):
            return None
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return f"stopped a leftover run (process group {pid}) from an interrupted run-experiment"


# Makes the training view with the session's interpreter, outside the sandbox, so
# nothing of the project's but the two fixed modules may run: -I keeps the project's
# folder off the import path (a numpy.py planted there is never imported) and ignores
# PYTHON* variables; the modules are compiled from the bytes whose hash setup pinned
# (a planted .pyc is never read); the cache is the session's, whatever the caller set.
VIEW_BUILDER = """
import hashlib, importlib.util, json, sys
root, cache_base, dataset, dest, pins = sys.argv[1:6]
pins = json.loads(pins)
for name in ("data_sources", "dataset_cache"):
    path = root + "/" + name + ".py"
    with open(path, "rb") as f:
        source = f.read()
    if hashlib.sha256(source).hexdigest() != pins.get(name + ".py"):
        sys.exit(name + ".py is not the one the session was set up with")
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None, origin=path))
    module.__file__ = path
    sys.modules[name] = module
    exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
sys.modules["dataset_cache"].CACHE_BASE = cache_base
sys.modules["dataset_cache"].train_view(sys.modules["data_sources"].get_source(dataset), dest, link=False)
"""


def train_view(root: str, config: dict) -> tuple[str, list[str]]:
    """The folder that stands for the dataset cache in the sandbox: the training split
    only (dataset_cache.train_view), and the names of the cache's files to bind into
    it (whole training files, the tokenizer: bound, not linked, so the cache itself
    is never touched). Made once per session (see VIEW_BUILDER), kept while the cache
    is unchanged (a cache that changed makes the run tampered anyway), under a lock:
    a wave's workers share it."""
    cache = config["eval"]["cache_dir"]
    folder = os.path.join(root, sandbox.VIEW_DIR)
    os.makedirs(folder, exist_ok=True)
    view = sandbox.real_dir(os.path.join(folder, os.path.basename(cache)), folder)
    stamp = os.path.join(folder, os.path.basename(cache) + ".state")
    state = cache_state(cache)
    with open(os.path.join(folder, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if read_json(stamp, default=None) != {"cache": cache, "state": state} \
                or not os.path.exists(os.path.join(view, "manifest.json")):
            env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
            proc = subprocess.run([config["python"], "-I", "-B", "-c", VIEW_BUILDER, root, os.path.dirname(cache),
                                   config["dataset"], view, json.dumps(config["fixed_files"])],
                                  cwd=folder, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise UserError(f"the training view of the dataset could not be made ({last}): check "
                                f"the data with python prepare.py --dataset {config['dataset']} --verify")
            write_atomic(stamp, json.dumps({"cache": cache, "state": state}) + "\n")
    made = read_json(os.path.join(view, "manifest.json"), default={}) or {}
    splits, bound = made.get("splits"), (made.get("view_of") or {}).get("bind") or []
    if not isinstance(splits, dict) or list(splits) != ["train"] \
            or not all(isinstance(f, str) and f in made.get("files", {}) and "/" not in f for f in bound):
        raise UserError(f"{view} is not a view of the training split alone: delete it, and run again")
    return view, bound


def sandboxed_command(root: str, config: dict, setting: dict, command: list[str], tree: str,
                      env: dict, caches: dict, token: str) -> tuple[list[str], dict]:
    """`command` wrapped in the session's sandbox, and the environment to start it
    with (the run token in it: see stop_leftover_run)."""
    kind = setting["kind"]
    if kind == sandbox.NONE:
        return command, {**env, TOKEN_ENV: token}
    writable = sandbox.writable_dirs(root, config, tree, caches["TORCHINDUCTOR_CACHE_DIR"])
    cache = (config.get("eval") or {}).get("cache_dir")
    hidden_val = config.get("measure") == "harness" and cache and setting.get("validation") == "hidden"
    if kind == sandbox.SANDBOX_EXEC:
        unreadable = []
        if hidden_val:
            manifest = read_json(os.path.join(cache, "manifest.json"), default={}) or {}
            train = {f for f, _, _ in manifest.get("splits", {}).get("train", [])}
            unreadable = [os.path.join(cache, f) for split, slices in manifest.get("splits", {}).items()
                          if split != "train" for f, _, _ in slices if f not in train]
        return sandbox.sandbox_exec_command(command, writable=writable, unreadable=unreadable,
                                            network=setting.get("network", False)), {**env, TOKEN_ENV: token}
    binds, hidden = [], []
    if hidden_val:
        view, bound = train_view(root, config)
        binds += [(view, cache)] + [(os.path.join(cache, f), os.path.join(cache, f)) for f in bound]
        # Other copies of the validation text within reach: a second cache of the same
        # dataset in the default place, the files an embedded dataset ships in the
        # tree, and git's history of them (a run has no use for git).
        default = os.path.join(os.path.expanduser("~/.cache/autoresearch"), os.path.basename(cache))
        if os.path.isdir(default) and os.path.realpath(default) != os.path.realpath(cache):
            hidden.append(default)
        manifest = read_json(os.path.join(cache, "manifest.json"), default={}) or {}
        held_out = {f for split, slices in manifest.get("splits", {}).items() if split != "train"
                    for f, _, _ in slices}
        for base in dict.fromkeys([tree, root]):
            hidden.append(os.path.join(base, ".git"))
            shipped = os.path.join(base, "datasets", config["dataset"])
            hidden += [os.path.join(shipped, f) for f in sorted(held_out)]
        hidden = [h for h in hidden if os.path.lexists(h)]
    python = config["python"]
    needed = sandbox.needed_paths(root, tree, python, cache, env)
    wrapped = sandbox.bwrap_command(command, cwd=tree, needed=needed, writable=writable,
                                    protected=sandbox.protected(root, config, tree), binds=binds,
                                    hidden=hidden, network=setting.get("network", False), env=env)
    # bubblewrap itself needs no environment (the run's is on its command line): the
    # token stays with bubblewrap, outside the sandbox.
    return wrapped, {TOKEN_ENV: token}


NAN = re.compile(r"\bnan\b|explod", re.IGNORECASE)   # the harness: "loss is NaN", "loss exploded"


def tampered(root, config):
    changed = changed_fixed_files(root, config["fixed_files"])
    repair = f"{TAMPER_REPAIR}, then run again; a tampered run is never recorded"
    if cache_changed(config):
        changed.append(f"the dataset cache in {config['eval']['cache_dir']}")
        repair = (f"the data this session is measured on changed, so later runs are not "
                  f"comparable with earlier ones: check it (python prepare.py --dataset "
                  f"{config['dataset']} --verify) and set up a new session; a tampered run is never recorded")
    if config.get("plugin_digest") and plugin_digest(PLUGIN_ROOT) != config["plugin_digest"]:
        changed.append(f"the plugin's scripts or hooks in {PLUGIN_ROOT}")
        repair = ("put the plugin back as it was (reinstall it: claude plugin install "
                  "experiment@autoresearch, or git checkout -- experiment-plugin in a clone); "
                  "the guard and the checks are only as good as their code")
    if changed:
        print(f"status: tampered ({', '.join(changed[:5])} changed since setup)")
        print(f"repair: {repair}")
    return bool(changed)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class Stopped(BaseException):
    """run-experiment itself was told to stop while its run was going."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def run_target(root, config, timeout, seed, worker=None, cwd=None, log_path=None,
               running=None, siblings=None, results=None, test=False):
    """Start the target in its own session (so its process group is ours to kill);
    returns (exit code or None on timeout, seconds, the machine's load reading).

    A project of the person's own starts with its run command (config "run").
    A session measured by the harness (config "measure": "harness") starts the target
    through launch.py, with the harness's result channel: a socket whose other end
    the runner serves (measure.ServedRun: the runner's clock, the evaluation in a
    process of its own); that ServedRun is appended to `results`. This
    process is the subreaper of the run: whatever the run started is killed with it,
    in its group or not.

    A wave's candidate runs the same way from its own worktree (`cwd`), with its own
    log and running file, on one `worker` of the local backend: that worker's
    environment (CUDA_VISIBLE_DEVICES, thread counts) and, on a CPU, its own cores."""
    python = config["python"]
    if not config.get("run") and not os.path.exists(python):
        raise UserError(f"interpreter {python} from the session config is gone: recreate "
                            "it, or set up a new session with --python")
    worker = worker or {}
    tree = cwd or root
    setting = sandbox.setting(config)
    sandbox.check(setting)
    caches = compile_cache_env(root, config, sandboxed=setting["kind"] != sandbox.NONE)
    base = {**caches, **worker.get("env", {}), **run_vars(config, seed)}
    cpus = worker.get("cpus")
    start = time.monotonic()
    running = running or os.path.join(root, STATE_DIR, "running.json")
    # If this script is itself stopped (the caller's own timeout), take the run down too.
    # The handler only raises; the group is killed below, outside it: a handler that
    # waited on the run itself could interrupt Popen.wait while it holds its lock, and
    # then wait forever for that lock. A signal that comes before the run is started
    # and recorded is held until it is.
    caught, armed = [], [False]

    def on_signal(signum, frame):
        caught.append(signum)
        if armed[0]:
            raise Stopped(signum)

    # A project of the person's own runs as they run it (setup --run: `uv run train.py`,
    # a script of theirs), through the shell, in the same process group as always.
    command = ["/bin/sh", "-c", config["run"]] if config.get("run") else [python, config["target"]]
    fds, served = (), None
    if config.get("measure") == "harness":
        # -E -s: no PYTHON* variable and no user site-packages (a usercustomize) take
        # part; -u for the unbuffered output that -E no longer takes from the variable.
        command = [python, "-E", "-s", "-u", "-B", LAUNCH, tree, config["target"],
                   json.dumps(config["fixed_files"])]
        served = ServedRun(root, config, LAUNCH, eval_limit=allowances(config, read_pins(root, config))[1],
                           test=test)       # the sealed split too: a session's end only (core/holdout.py)
        fds = (served.child.fileno(),)
        base.update(served.child_env())
    token = secrets.token_hex(16)
    try:
        command, env = sandboxed_command(root, config, setting, command, tree,
                                         sandbox.run_env(config, base, os.environ), caches, token)
    except BaseException:
        if served is not None:
            served.close()
        raise
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    become_subreaper()
    spared = set(children(os.getpid()))
    os.makedirs(os.path.dirname(running), exist_ok=True)
    with open(log_path or os.path.join(root, RUN_LOG), "wb") as out:
        try:
            proc = subprocess.Popen(command, cwd=tree, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, pass_fds=fds,
                                    preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        finally:
            if served is not None:
                served.start(start)
        monitor = LoadMonitor(proc.pid, cpus=cpus, siblings=siblings).start()
        if served is not None:
            served.group = proc.pid         # a rule the runner enforces, broken: the run ends there
        write_atomic(running, json.dumps({
            "pid": proc.pid, "pgid": proc.pid, "start": start_time(proc.pid), "sandbox": setting["kind"],
            "token": hashlib.sha256(token.encode()).hexdigest(), "target": config["target"]}) + "\n")

        def kill_group():
            # TERM the whole group, give it 5 s, then KILL whatever is left (dataloader
            # workers, compilers and other children included).
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

        stopped = None
        try:
            armed[0] = True
            if caught:
                raise Stopped(caught[0])
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
        except Stopped as e:
            stopped, code = e.signum, None
        for sig in STOP_SIGNALS:                  # a second signal must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN if stopped else previous[sig])
        kill_group()
        sweep(spared)
        reading = monitor.stop()
        if os.path.exists(running):
            os.unlink(running)
    if served is not None:
        served.finish()
        with open(log_path or os.path.join(root, RUN_LOG), "a", encoding="utf-8") as out:
            out.write("\n" + served.summary() + "\n")
        if results is not None:
            results.append(served)
    if stopped:
        sys.exit(128 + stopped)
    return code, time.monotonic() - start, reading


def classify(code, text, metrics, name, pattern=None):
    value = metrics.get(name)
    if code is None:
        return "timeout", None
    if isinstance(value, float) and value != value:
        return "nan", None
    if code != 0:
        return ("nan" if NAN.search(text) else "crash"), f"exit {code}"
    if not finite(value) and pattern:
        return "crash", f"no {name} in the output: the session's --metric-pattern {pattern!r} matched nothing"
    if not finite(value):
        found = [k for k, v in metrics.items() if finite(v)]
        return "crash", (f"no {name} in the output" + (
            f" (it printed {', '.join(found[:8])}: set up the session with --metric set to one "
            "of them, or print `" + name + ": <value>`)" if found else
            f": print `{name}: <value>` after a `---` line, or `METRIC {name}=<value>`"))
    return "ok", None


PINS = "pins-{tag}.json"      # in the state folder: the baseline's startup allowance and eval limit


def read_pins(root, config):
    return read_json(os.path.join(root, STATE_DIR, PINS.format(tag=config["tag"])), default=None)


def verdict(config, code, text, results, root=None):
    """(status, detail, metrics) of a finished run. Measured by the harness, the
    metrics are the runner's (the value its evaluation computed, its clock) and the
    harness's summary; what the target printed is not judged, and a result that
    fails measure.check is `invalid`; otherwise they are parsed from the output.
    The session's first measured ok run (the baseline) pins the startup allowance
    and the evaluation's time limit for every later one."""
    if config.get("measure") != "harness":
        metrics = parse_metrics(text, config.get("metric_pattern"), config["metric"])
        return (*classify(code, text, metrics, config["metric"], config.get("metric_pattern")), metrics)
    pins = read_pins(root, config) if root else None
    served = results[0] if results else None
    why, measured = check_result(config, served, pins)
    status, detail = classify(code, text, measured, config["metric"])
    # Refused: a run that exited 0, or one that broke a rule the runner enforces (its
    # budget, the evaluation's limit), however it ended.
    if why and (status == "ok" or (status == "crash" and (code == 0 or getattr(served, "violation", None)))):
        return "invalid", why, measured
    if status == "ok" and root and pins is None:
        write_atomic(os.path.join(root, STATE_DIR, PINS.format(tag=config["tag"])),
                     json.dumps(pin_from(config, served)) + "\n")
    return status, detail, measured


def run_checks(root, command, timeout, status, detail, text):
    """The session's --checks command (tests, a lint) after an ok run. A failure makes
    the run `checks_failed`: never kept, however good its metric. Its output is what
    the failure tail shows."""
    proc = subprocess.run(command, shell=True, cwd=root, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode == 0:
        return status, detail, text
    return "checks_failed", f"`{command}` exited {proc.returncode}", proc.stdout + proc.stderr
