"""The run in a sandbox that the operating system enforces.

Checks that run inside the template's own process can be walked around by the
template: it can patch what checks it, read any file the user can read, start a
daemon that outlives it. A sandbox is enforced by the kernel instead. Here:

  bwrap         bubblewrap on Linux (Debian's `bubblewrap` package). The run gets
                its own PID namespace (every process of the run dies with it), no
                network, the whole file system read-only except the run's own output
                folders, a private /tmp, the dataset cache replaced by a view that
                holds only the training split, and an environment built from an
                allowlist. GPUs stay visible.
  sandbox-exec  macOS's system sandbox: no network, no writes outside the output
                folders, the validation files unreadable. It has no PID namespace and
                cannot remap paths (a file that mixes splits stays readable).
  none          neither can run here: the run goes on unsandboxed, and setup says
                what that leaves open.

Setup chooses once and records the choice in the session config (`sandbox`); the
runner follows the config, never the caller's environment: no variable turns the
sandbox off. A session set up with a sandbox that can no longer run refuses to run.
"""
from __future__ import annotations

import functools
import glob
import os
import sys

from .common import cannot_start, COMPILE_CACHE, editable_files, PLUGIN_ROOT, SESSION_FILES, STATE_DIR, UserError
from .project import HARNESS

BWRAP, SANDBOX_EXEC, NONE = "bwrap", "sandbox-exec", "none"
VIEW_DIR = os.path.join(STATE_DIR, "view")      # <dataset>/: the training split's view of the cache

# The folders an honest run writes, relative to its working tree (setup --writable
# adds more). The harness writes data/last_run.json and data/run_*.json and nothing
# else. A project of the person's own writes checkpoints, logs and its tools' state
# (uv's .venv and uv.lock) wherever it likes: "." is its whole tree, less protected().
HARNESS_WRITABLE = ("data",)
OWN_WRITABLE = (".",)

# The environment of a run measured by the harness is what the runner and a wave's
# worker set, and from the caller's only these: the locale and terminal, and the
# choice of GPUs and thread counts (where a run goes and how fast, never what it
# computes or measures). PYTHONPATH, PYTHONSTARTUP, LD_PRELOAD, AUTORESEARCH_CACHE
# and everything else the caller's shell holds never reach the run.
CALLER_NAMES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TERM", "TZ",
                "AUTORESEARCH_QUIET", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "HIP_VISIBLE_DEVICES",
                "ROCR_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
                "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS")
CALLER_PREFIXES = ("LC_",)
# A run of the person's own command gets the caller's environment less these: the
# ways to put code into an interpreter or a loader before the script's first line,
# and the names only the runner may set.
NEVER_PASSED = ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONINSPECT",
                "PYTHONEXECUTABLE", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "LD_PRELOAD",
                "LD_LIBRARY_PATH", "LD_AUDIT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
                "CUDA_CACHE_PATH", "TMPDIR")
NEVER_PREFIXES = ("AUTORESEARCH_", "DYLD_")
# Taken from the environment of setup, recorded in the config, and given to every run:
# GPU machines often find libcuda through it.
SETUP_NAMES = ("LD_LIBRARY_PATH",)
GPU_DEVICES = ("/dev/nvidia*", "/dev/dri", "/dev/kfd")


# Where the system's bubblewrap is, and only there: a `bwrap` found through the
# caller's PATH could be a script that runs the command with no sandbox at all.
BWRAP_PATHS = ("/usr/bin/bwrap", "/bin/bwrap", "/usr/local/bin/bwrap")


def bwrap_path() -> str | None:
    return next((p for p in BWRAP_PATHS if os.path.isfile(p) and os.access(p, os.X_OK)), None)


@functools.lru_cache(maxsize=None)
def available() -> tuple[str | None, str]:
    """(kind, why): the sandbox this machine can run, tried for real, with a line that
    says what it is or why there is none."""
    if sys.platform.startswith("linux"):
        bwrap = bwrap_path()
        if not bwrap:
            return None, "bubblewrap is not installed (apt-get install bubblewrap)"
        probe = [bwrap, *namespace_flags(network=False), "--ro-bind", "/", "/", "--dev", "/dev",
                 "--proc", "/proc", "--tmpfs", "/tmp", "--", "true"]
        why = cannot_start(probe, timeout=30)
        return (None, f"bubblewrap cannot make a sandbox here ({why})") if why else (BWRAP, "bubblewrap")
    if sys.platform == "darwin":
        if not os.path.exists("/usr/bin/sandbox-exec"):
            return None, "sandbox-exec is not on this Mac"
        why = cannot_start(["/usr/bin/sandbox-exec", "-p", "(version 1)(allow default)", "/usr/bin/true"],
                           timeout=30)
        return (None, f"sandbox-exec refuses to run here ({why})") if why else (SANDBOX_EXEC, "sandbox-exec")
    return None, f"no sandbox is known on {sys.platform}"


def namespace_flags(network: bool) -> list[str]:
    """What bubblewrap takes away from the run:

    --unshare-pid      its own PID namespace: the run sees only its own processes,
                       and when the namespace's first process ends the kernel kills
                       every process in it, a double-forked setsid daemon included.
    --as-pid-1         the run itself is that first process, not a bubblewrap init
                       above it: its CPU time then reaches the runner's rusage when it
                       is waited for (under bubblewrap's init it never does, and the
                       load check would count the run as other work beside itself).
    --die-with-parent  that first process dies with the runner (even a SIGKILLed one),
                       so no run outlives the script that started it.
    --unshare-net      only a loopback of its own: no route out, nor to a server on
                       this machine's 127.0.0.1.
    --unshare-ipc      no System V shared memory with the rest of the machine.
    --cap-drop ALL     started by root, the run would keep root's capabilities and
                       could simply remount the file system writable; without them it
                       cannot mount, unmount or remount anything.

    Not --new-session: the runner already starts bubblewrap in a session of its own,
    with no controlling terminal (the reason bubblewrap offers it), and the run
    staying in bubblewrap's process group keeps the runner's TERM-the-group-then-KILL
    timeout as it was."""
    return ["--unshare-pid", "--as-pid-1", "--die-with-parent", "--unshare-ipc", "--cap-drop", "ALL",
            *([] if network else ["--unshare-net"])]


# A harness whose evaluation asks the runner for the validation rows (over its
# channel: prepare.serve_evaluation) has this function; only then can a run evaluate
# with no validation file in view, and only then does the sandbox hide them.
SERVED_VALIDATION = "def serve_evaluation("


def harness_serves_validation(root: str, measured_by: str | None) -> bool:
    """Whether runs of this session evaluate on rows the runner serves (see above)."""
    if measured_by != "harness":
        return False
    try:
        with open(os.path.join(root, "prepare.py"), encoding="utf-8") as f:
            return SERVED_VALIDATION in f.read()
    except OSError:
        return False


def session_setting(kind_of_project: str, python_env: dict | None = None, network: bool = False,
                    writable=(), hide_validation: bool = False) -> dict:
    """The `sandbox` entry of a new session's config: what every run of it gets."""
    env = python_env if python_env is not None else os.environ
    kind, why = available()
    base = HARNESS_WRITABLE if kind_of_project == HARNESS else OWN_WRITABLE
    return {"kind": kind or NONE, "why": why, "network": bool(network),
            "writable": list(dict.fromkeys([*base, *writable])),
            "validation": "hidden" if hide_validation else "in view",
            "env": {k: env[k] for k in SETUP_NAMES if env.get(k)}}


def setting(config: dict) -> dict:
    """The session's sandbox. A config from before sandboxes existed gets the one this
    machine can run, with the defaults: on wherever it can be."""
    found = config.get("sandbox")
    if found:
        return found
    return session_setting(config.get("project", HARNESS), python_env={})


def check(setting: dict) -> None:
    """Refuse to run unsandboxed a session that was set up with a sandbox."""
    if setting["kind"] == NONE:
        return
    kind, why = available()
    if kind != setting["kind"]:
        raise UserError(f"this session runs in {setting['kind']}, which cannot run here now "
                        f"({why}): repair it, or set up a new session (its research config "
                        "will say what an unsandboxed run leaves open)")


def describe(setting: dict) -> str:
    """One line for the research config."""
    if setting["kind"] == NONE:
        return (f"none ({setting.get('why')}): the run can read the validation data and write "
                "the project")
    folders = [f for f in setting.get("writable") or [] if f != "."]
    project = ("project writable except .git, the records, the target and the fixed files"
               if "." in (setting.get("writable") or []) else
               f"project read-only except {', '.join(folders + ['the compile cache'])}")
    parts = ["network on" if setting.get("network") else "no network", project,
             "validation data hidden" if setting.get("validation") == "hidden" else "validation data readable"]
    if setting["kind"] == BWRAP:
        return "bubblewrap (own PID namespace, " + ", ".join(parts) + ")"
    return "sandbox-exec (" + ", ".join(parts) + "; no PID namespace)"


def run_env(config: dict, base: dict, caller: dict) -> dict:
    """The run's environment: `base` (what the runner and the worker set) over what
    may come from the caller's, and what setup recorded.

    A run measured by the harness gets only the allowlist from the caller. A run of
    the person's own command keeps the caller's environment (its tools may need
    theirs), less what injects code or names a runner's value."""
    if config.get("measure") == "harness":
        passed = {k: v for k, v in caller.items() if k in CALLER_NAMES or k.startswith(CALLER_PREFIXES)}
    else:
        passed = {k: v for k, v in caller.items() if k not in NEVER_PASSED and not k.startswith(NEVER_PREFIXES)}
    return {**passed, **setting(config).get("env", {}), **base}


def real_dir(path: str, inside: str) -> str:
    """`path` made and checked: a real folder inside `inside`, reached through no
    symbolic link (a `data` that links to .git must not make .git writable)."""
    path = os.path.abspath(path)
    inside = os.path.realpath(inside)
    os.makedirs(path, exist_ok=True)
    real = os.path.realpath(path)
    if real != path or not real.startswith(inside + os.sep) or os.path.islink(path):
        raise UserError(f"{path} is not a plain folder inside {inside} (a symbolic link?): a run "
                        "may write only there; remove the link and run again")
    return real


def writable_dirs(root: str, config: dict, cwd: str, compile_cache: str) -> list[str]:
    """The folders a run may write: the session's list, in its working tree, and the
    session's compile cache. Never .git or the session's state; the tree itself only
    for a project of the person's own, and then with protected() read-only in it."""
    out, own = [], config.get("measure") != "harness"
    for name in setting(config).get("writable") or []:
        norm = os.path.normpath(os.path.expanduser(name))
        if norm == "." and own:
            out.append(os.path.realpath(cwd))
            continue
        if os.path.isabs(norm) and own:
            # A folder of the person's outside the project (a dataset library's cache, say),
            # never one that holds the project or the plugin.
            real = os.path.realpath(norm)
            if any(os.path.realpath(p).startswith(real.rstrip(os.sep) + os.sep) or os.path.realpath(p) == real
                   for p in (root, cwd, PLUGIN_ROOT)):
                raise UserError(f"writable folder {name!r} in the session config holds the project or the plugin")
            os.makedirs(real, exist_ok=True)
            out.append(real)
            continue
        if norm in (".", "") or norm.startswith("..") or os.path.isabs(norm) \
                or norm.split(os.sep)[0] in (".git", STATE_DIR):
            raise UserError(f"writable folder {name!r} in the session config is not a folder of the project")
        out.append(real_dir(os.path.join(cwd, norm), cwd))
    out.append(real_dir(compile_cache, os.path.join(root, COMPILE_CACHE)))
    if config.get("run") and "uv " in f" {config['run']}":
        # uv keeps its cache (and lock) in the user's cache folder: a `uv run` needs it.
        out.append(real_dir(os.path.expanduser("~/.cache/uv"), os.path.expanduser("~")))
    return out


def protected(root: str, config: dict, cwd: str) -> list[str]:
    """What stays read-only inside a writable tree: git, the session's files and state,
    Claude Code's settings, the plugin, the target and its scope, the fixed files."""
    names = [".git", ".claude", *SESSION_FILES, *editable_files(config), *(config.get("fixed_files") or {})]
    paths = [os.path.join(base, n) for base in dict.fromkeys([cwd, root]) for n in names]
    paths.append(PLUGIN_ROOT)
    return [p for p in dict.fromkeys(os.path.realpath(p) for p in paths) if os.path.lexists(p)]


def needed_paths(root: str, tree: str, python: str, cache: str | None, env: dict) -> list[str]:
    """What a run needs to read wherever it lives (bwrap_command binds those under /tmp
    back over the private /tmp): the project, the plugin, the interpreter's environment
    (the session's and the scripts' own: a wrapper may exec the latter), the cache, and
    the folders on the run's PATH (a `uv` or `torchrun` in a virtual environment)."""
    venvs = [os.path.dirname(os.path.dirname(p)) for p in (python, os.path.realpath(python))]
    return [root, tree, PLUGIN_ROOT, *venvs, sys.prefix, *([os.path.dirname(cache)] if cache else []),
            *[d for d in env.get("PATH", "").split(os.pathsep) if os.path.isabs(d) and os.path.isdir(d)]]


def bwrap_command(argv: list[str], *, cwd: str, needed=(), writable=(), protected=(), binds=(),
                  hidden=(), network=False, env: dict) -> list[str]:
    """The bubblewrap command line that runs `argv` in the sandbox.

    Mounts are made in order, each over what came before:
      /                    the whole file system, read-only (the project, .git, the
                           records, the plugin, HOME, the interpreter and its packages)
      /dev                 a minimal one, plus the GPUs' device nodes
      /proc                the PID namespace's own (no other process is visible)
      /tmp                 a private, empty tmpfs; of the `needed` paths (the project,
                           the interpreter, the plugin, the cache), those that live
                           under /tmp are bound back, read-only
      writable, protected  each bound over itself, read-write or read-only again,
                           outer folders first: the deeper one decides (.git, the
                           records and the target in a writable tree stay read-only;
                           the compile cache inside .autoresearch stays writable)
      hidden               a folder: an empty, read-only tmpfs; a file: /dev/null
      binds (src, dest)    src read-only at dest (the training view over the cache)
    The environment is exactly `env` (--clearenv), and file descriptors the caller
    passes (pass_fds: the result channel) stay open through bubblewrap."""
    cmd = [bwrap_path() or "bwrap", *namespace_flags(network),
           "--ro-bind", "/", "/", "--dev", "/dev"]
    for pattern in GPU_DEVICES:
        for dev in sorted(glob.glob(pattern)):
            cmd += ["--dev-bind", dev, dev]
    cmd += ["--proc", "/proc", "--tmpfs", "/tmp"]
    for path in sorted({os.path.realpath(p) for p in needed}):
        if path.startswith("/tmp/"):
            cmd += ["--ro-bind", path, path]
    for path in sorted({os.path.abspath(p) for p in needed}):
        if path.startswith("/tmp/") and os.path.islink(path):     # a venv linked from under /tmp
            cmd += ["--symlink", os.readlink(path), path]
    # The outer folder first, then what lies inside it: a writable folder inside a
    # protected one (the compile cache in .autoresearch, a wave's worktree and its
    # data/) stays writable, and a protected one inside a writable tree (.git in a
    # project of the person's own) stays read-only.
    layered = [(p, "--bind") for p in writable] + [(p, "--ro-bind") for p in protected]
    for path, how in sorted(layered, key=lambda e: (e[0].rstrip(os.sep).count(os.sep), e[1] == "--ro-bind")):
        cmd += [how, path, path]
    for path in hidden:
        cmd += ["--tmpfs", path, "--remount-ro", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    for src, dest in binds:
        cmd += ["--ro-bind", src, dest]
    cmd += ["--chdir", cwd, "--clearenv"]
    for key, value in sorted(env.items()):
        cmd += ["--setenv", key, value]
    return cmd + ["--", *argv]


def _quoted(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sandbox_exec_command(argv: list[str], *, writable=(), unreadable=(), network=False) -> list[str]:
    """The macOS command line: sandbox-exec with a profile that allows everything
    except the network, writes outside the run's folders (and the temporary folders
    every process needs), and reading the validation files. Profiles match the real
    path, so every path is resolved first."""
    rules = ["(version 1)", "(allow default)"]
    if not network:
        rules.append("(deny network*)")
    allowed = [os.path.realpath(p) for p in writable] + ["/private/tmp", "/private/var/folders", "/dev"]
    rules.append("(deny file-write* (require-not (require-any "
                 + " ".join(f"(subpath {_quoted(p)})" for p in allowed) + ")))")
    if unreadable:
        rules.append("(deny file-read* " + " ".join(f"(literal {_quoted(os.path.realpath(p))})"
                                                  for p in unreadable) + ")")
    return ["/usr/bin/sandbox-exec", "-p", "\n".join(rules), *argv]
