"""The agent's own sandbox: Claude Code's sandboxed Bash, set up for a session.

While a session is active, every Bash command the agent runs goes through Claude Code's
sandbox (bubblewrap on Linux, Seatbelt on macOS): it may write inside the project and the
temporary folder, never to what `protected` lists (git's store, the records, the harness,
the dependencies, the interpreter's environment, tracked files outside the session's
scope, Claude Code's settings, the plugin). A helper the agent writes and then runs is
held to the same rules, whatever it calls. Only the plugin's scripts run outside the
sandbox: they are the ones that write the records and move git.

Setup (and resume) write the settings into the project's `.claude/settings.local.json`,
merged with what the file already holds; `.autoresearch/agent-sandbox.json` keeps what
was added, so that it can be taken out again exactly. It is taken out once the session
has ended and the person is back (their next prompt, or the next start of Claude Code),
never by the agent's own call: an agent that ends the session keeps its sandbox.

Claude Code reads the file when it starts, and again whenever a settings file in a folder
it watched from the start changes: `nudge` makes the running one read it at once.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys

from .common import (cannot_start, editable_files, find_root, PLUGIN_ROOT, read_json, SCRIPT_ONLY_FILES, SCRIPTS_DIR,
                     SESSION_FILES, STATE_DIR, UserError, write_atomic)
from .git import git
from .harness import DEPENDENCY_FILES, FIXED_DIRS, FIXED_FILES

SETTINGS = os.path.join(".claude", "settings.local.json")
STATE = os.path.join(STATE_DIR, "agent-sandbox.json")

# What each kind of protected path is, for the research config and the guard's replies.
KINDS = {"git": "git's store (the session's branch, refs and the log's copy)",
         "records": "written only by the plugin's scripts",
         "harness": "part of the fixed harness",
         "dependencies": "the dependencies, fixed for a session",
         "environment": "the interpreter's environment (installing packages)",
         "scope": "tracked, outside the session's scope",
         "settings": "Claude Code's settings, which load the guard and this sandbox",
         "plugin": "the plugin (its scripts and hooks)"}


def available() -> tuple[bool, str]:
    """Whether Claude Code's sandbox can run here, and with what (or why not)."""
    if sys.platform == "darwin":
        return (os.path.exists("/usr/bin/sandbox-exec"),
                "Seatbelt" if os.path.exists("/usr/bin/sandbox-exec") else "no sandbox-exec on this Mac")
    if not sys.platform.startswith("linux"):
        return False, f"Claude Code has no sandbox on {sys.platform}"
    missing = [p for p in ("bwrap", "socat") if shutil.which(p) is None]
    if missing:
        return False, (f"{' and '.join(missing)} not installed (Debian/Ubuntu: "
                       "sudo apt-get install bubblewrap socat)")
    why = cannot_start(["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                        "--unshare-pid", "--unshare-net", "true"], timeout=10)
    return (False, f"bubblewrap cannot start here ({why})") if why else (True, "bubblewrap")


def scripts() -> list[str]:
    """The plugin's commands, as absolute paths: the only programs that run outside the
    sandbox, and only when called by that exact path, alone."""
    return sorted(os.path.join(SCRIPTS_DIR, n) for n in os.listdir(SCRIPTS_DIR)
                  if "." not in n and os.access(os.path.join(SCRIPTS_DIR, n), os.X_OK)
                  and os.path.isfile(os.path.join(SCRIPTS_DIR, n)))


def outside_scope(root: str, config: dict) -> list[str]:
    """Tracked paths the session may not change, as few as cover them: a folder that
    holds no editable file is one entry, a folder that does is looked into."""
    editable = set(editable_files(config)) | set(SESSION_FILES)
    inside = {os.path.dirname(f) for f in editable}
    for d in list(inside):
        while d:
            inside.add(d)
            d = os.path.dirname(d)
    out = set()
    for f in git(root, "ls-files", "-z").split("\0"):
        parts = f.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix not in inside:
                if prefix not in editable:
                    out.add(prefix)
                break
    return sorted(p for p in out if p)


def names(config: dict) -> dict[str, str]:
    """The protected names, relative to the project root, whether they exist yet or not
    (a glob for the requirements files), with their kinds."""
    out = {".git": "git", SETTINGS.split(os.sep)[0]: "settings",
           "experiment-plugin": "plugin",        # the plugin, in a clone of its repository
           ".venv": "environment"}
    out.update((n, "records") for n in SCRIPT_ONLY_FILES)
    out.update((n, "harness") for n in (*FIXED_FILES, *FIXED_DIRS, *(config.get("read_only") or [])))
    out.update((n, "dependencies") for n in (*DEPENDENCY_FILES, "requirements*.txt"))
    return out


def protected(root: str, config: dict) -> dict[str, str]:
    """Every path the agent's Bash may not write during the session, absolute, with its
    kind (KINDS). Records are listed even before they exist, so that nothing can be put
    in their place (a link, say) before a script writes them."""
    out: dict[str, str] = {}

    def add(path, kind, always=False):
        full = os.path.normpath(os.path.join(root, path))
        if full not in out and (always or os.path.lexists(full)):
            out[full] = kind

    for folder in (PLUGIN_ROOT, os.path.realpath(PLUGIN_ROOT)):
        add(folder, "plugin", always=True)
    present = set(os.listdir(root))
    for name, kind in names(config).items():
        matches = fnmatch.filter(present, name) if "*" in name else [name]
        for match in matches:
            add(match, kind, always=kind in ("git", "records", "settings"))
    for name in (config.get("fixed_files") or {}):
        add(name.split("/")[0] if name.split("/")[0] in FIXED_DIRS else name, "harness")
    # The interpreter's environment when it lives in the project: writing there is
    # installing packages, and a .pth file there runs in the plugin's own scripts.
    python = os.path.abspath(os.path.join(root, config.get("python") or ""))
    rel = os.path.relpath(python, root)
    if config.get("python") and not rel.startswith(".."):
        add(rel.split(os.sep)[0], "environment")
    for rel in outside_scope(root, config):
        add(rel, "scope")
    # A protected folder covers what is inside it.
    folders = [p for p in out if os.path.isdir(p) and not os.path.islink(p)]
    return {p: k for p, k in out.items()
            if not any(p != f and p.startswith(f + os.sep) for f in folders)}


def sealed(config: dict) -> list[str]:
    """The files of the session's dataset cache that only its sealed test split reads,
    absolute: nothing reads them while the session is active, the agent included. (A
    file that holds other splits too, tinystories' one file, stays readable: the run's
    own sandbox still hides it, and what the agent could copy from it gains nothing on
    validation.)"""
    cache = (config.get("eval") or {}).get("cache_dir")
    manifest = read_json(os.path.join(cache, "manifest.json"), default=None) if cache else None
    splits = (manifest or {}).get("splits") if isinstance(manifest, dict) else None
    if not isinstance(splits, dict):
        return []
    others = {s[0] for name, split in splits.items() if name != "test" for s in split}
    return sorted({os.path.join(cache, s[0]) for s in splits.get("test", []) if s[0] not in others})


def guard_view(root: str, config: dict) -> dict:
    """What the guard hook judges a path by: the protected paths and names, and the
    sealed test split's files."""
    return {"protected": protected(root, config), "names": names(config), "sealed": sealed(config)}


def settings(denied: list[str], unread: list[str] = ()) -> dict:
    """The settings a session adds: the sandbox on, with no way around it but the
    plugin's scripts, the protected paths denied, and the `unread` files (the sealed
    test split) neither readable in the sandbox nor by the Read tool."""
    allowed = [rule for s in scripts() for rule in (s, f"{s}:*")]
    return {
        "sandbox": {
            "enabled": True,
            "autoAllowBashIfSandboxed": True,      # nobody is there to approve at night
            "allowUnsandboxedCommands": False,     # no retry outside it
            "failIfUnavailable": True,             # no silent fallback to no sandbox
            "excludedCommands": allowed,
            "filesystem": {"denyWrite": sorted(denied), **({"denyRead": sorted(unread)} if unread else {})},
        },
        # "//" starts an absolute path in a permission rule.
        "permissions": {"allow": [f"Bash({rule})" for rule in allowed],
                        "deny": [f"Read(/{path})" for path in sorted(unread)]},
    }


def settings_path(root: str) -> str:
    return os.path.join(root, SETTINGS)


def read_settings(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}): fix it or move it aside, then run "
                        "this again")
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object: fix it or move it aside, then run "
                        "this again")
    return data


def read_state(root: str) -> dict:
    """What apply wrote: the protected paths (the guard reads them) and, where it
    changed the settings, what to put back."""
    return read_json(os.path.join(root, STATE), default={}) or {}


def apply(root: str, config: dict) -> list[str]:
    """Write the session's sandbox settings (where the sandbox can run) and return the
    research config's lines about it."""
    state = read_state(root)
    state.update(guard_view(root, config))
    denied = state["protected"]
    ok, what = available()
    if not ok:
        write_atomic(os.path.join(root, STATE), json.dumps(state, indent=2) + "\n")
        return [f"  {'agent bash':<10} NOT sandboxed: {what}. Only the guard hook checks the "
                "agent's commands:",
                f"  {'':<10} a helper it writes and runs can change the records, .git and the "
                "harness (run-experiment's hash check and the log's copies detect it later)."]
    path = settings_path(root)
    current = read_settings(path)
    if "settings" not in state:          # the first time: what to put back at the end
        state.update(settings=path, existed=os.path.exists(path), sandbox=current.get("sandbox"),
                     allow=[])
    # Claude Code protects its own settings files (and .claude/commands, agents, skills,
    # hooks) in the sandbox by itself, by mounting over them: a read-only .claude/ would
    # leave it no place to mount, and no command would start. For the same reason git's
    # hooks folder, which it also mounts over, must exist before .git is read-only.
    if os.path.isdir(os.path.join(root, ".git")):
        os.makedirs(os.path.join(root, ".git", "hooks"), exist_ok=True)
    wanted = settings([p for p, kind in denied.items() if kind != "settings"], state.get("sealed") or [])
    permissions = current.get("permissions")
    if not isinstance(permissions, dict):
        permissions = current["permissions"] = {}
    for key in ("allow", "deny"):
        rules = permissions.get(key)
        if not isinstance(rules, list):
            rules = permissions[key] = []
        for rule in wanted["permissions"][key]:
            if rule not in rules:
                rules.append(rule)
                state.setdefault(key, []).append(rule)
        if not rules:
            del permissions[key]
    current["sandbox"] = wanted["sandbox"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(os.path.join(root, STATE), json.dumps(state, indent=2) + "\n")
    write_atomic(path, json.dumps(current, indent=2) + "\n")
    ignore(root)
    nudge()
    return [f"  {'agent bash':<10} sandboxed ({what}): it writes inside the project, never to "
            f".git, the records, the harness or .claude/;",
            f"  {'':<10} only the plugin's scripts run outside it (in {SETTINGS} until the "
            "session is over)"]


def nudge() -> None:
    """Make the Claude Code this runs under (CLAUDECODE=1) read its settings again now.
    It watches the settings folders that existed when it started; a project's .claude/
    made later is not one of them, the user's own folder is. A new time stamp on the
    user's settings file (an empty one where there is none) makes it read them all."""
    if os.environ.get("CLAUDECODE") != "1":
        return
    folder = os.environ.get("CLAUDE_CONFIG_DIR") or os.path.join(os.path.expanduser("~"), ".claude")
    path = os.path.join(folder, "settings.json")
    try:
        if os.path.exists(path):
            os.utime(path)
        elif os.path.isdir(folder):
            write_atomic(path, "{}\n")
    except OSError:
        pass                # then it reads them at its next start


def ignore(root: str) -> None:
    """Keep the settings file out of `git status`, as Claude Code does for its own."""
    if subprocess.run(["git", "check-ignore", "-q", "--no-index", SETTINGS], cwd=root).returncode == 0:
        return
    if git(root, "ls-files", "--", SETTINGS):
        return
    info = git(root, "rev-parse", "--git-path", "info/exclude")
    info = info if os.path.isabs(info) else os.path.join(root, info)
    os.makedirs(os.path.dirname(info), exist_ok=True)
    with open(info, "a", encoding="utf-8") as f:
        f.write(f"\n# Claude Code's local settings (the session's sandbox)\n/{SETTINGS}\n")


def remove(root: str) -> bool:
    """Take out what `apply` added: the sandbox settings as they were before, the allow
    rules it added; a settings file it created that holds nothing else goes. Returns
    whether the settings were changed back."""
    state = read_state(root)
    if not state:
        return False
    path = state.get("settings")
    current = None
    if path:
        try:
            current = read_settings(path)
        except UserError:
            pass                            # the person's to fix: leave it as it is
    if current is not None:
        if state.get("sandbox") is None:
            current.pop("sandbox", None)
        else:
            current["sandbox"] = state["sandbox"]
        permissions = current.get("permissions")
        for key in ("allow", "deny"):
            if isinstance(permissions, dict) and isinstance(permissions.get(key), list):
                permissions[key] = [r for r in permissions[key] if r not in state.get(key, [])]
                if not permissions[key]:
                    del permissions[key]
        if isinstance(permissions, dict) and not permissions:
            del current["permissions"]
        if current or state.get("existed"):
            write_atomic(path, json.dumps(current, indent=2) + "\n")
        elif os.path.exists(path):
            os.unlink(path)
        nudge()
    os.unlink(os.path.join(root, STATE))
    return bool(path)


def remove_after_end(payload: dict, is_active) -> bool:
    """For a hook that runs when the person is back (a prompt, a new start): take the
    settings out if the session of this project has ended (`is_active(root)` says)."""
    start = os.environ.get("CLAUDE_PROJECT_DIR") or payload.get("cwd") or os.getcwd()
    try:
        root = find_root(start)
    except UserError:
        return False
    if not os.path.exists(os.path.join(root, STATE)) or is_active(root):
        return False
    return remove(root)
