#!/usr/bin/env python3
"""PreToolUse guard: while a session is active, keep the measurement honest.

The first line of two. The second is Claude Code's sandbox, which setup-session turns
on for the agent's Bash (core/agent_sandbox.py): the operating system refuses its
writes to git's store, the records, the harness and the plugin, whatever program makes
them. This hook answers first, with a reason that says what to do instead, and it
covers what the sandbox does not:
  * Edit / Write / MultiEdit / NotebookEdit, which run outside it: no writes to a
    protected path (link targets resolved), nor to a tracked file outside the scope;
  * the plugin's scripts, the only commands that run outside it: only by their full
    path, alone on the command line, with plain arguments;
  * package installs, in any spelling (pip3.11, python -m pip, uv run --with, ...);
  * Bash writes it can read from the command (redirections, rm/mv/cp/ln/tee/..., an
    in-place editor with any flag spelling, inline code that writes and names a
    protected file) and git commands that move the branch or delete its refs, so that
    the agent is told at once, and a platform without the sandbox keeps this line.
It allows everything else, including reading any file. With no active session it
allows everything. A deny is the documented PreToolUse JSON.

It runs on every tool call, so it imports only the bottom of the library, and reads the
protected paths setup wrote into .autoresearch/agent-sandbox.json.
"""
import fnmatch
import json
import os
import re
import shlex
import sys

sys.dont_write_bytecode = True  # nothing is written into the plugin's folder
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "scripts"))
from core import common  # noqa: E402

FILE_TOOLS = {"Edit": "file_path", "Write": "file_path", "MultiEdit": "file_path",
              "NotebookEdit": "notebook_path"}


# ------------------------------------------------------------------ the session

def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def active_root(payload):
    """The project root when a session is active there. The common cases are read from
    files; anything less clear goes to the full rule (session.active_root)."""
    starts = [os.environ.get("CLAUDE_PROJECT_DIR"), payload.get("cwd") or os.getcwd()]
    unclear = False
    for start in filter(None, starts):
        try:
            root = common.find_root(start)
        except common.UserError:
            continue
        outer = root.split(os.sep + common.WORKTREES + os.sep)[0]
        for candidate in dict.fromkeys((outer, root)):
            state = read_json(os.path.join(candidate, common.STATE_DIR, "state.json"))
            if isinstance(state, dict) and state.get("active"):
                return candidate
            head = ""
            try:
                with open(os.path.join(candidate, ".git", "HEAD"), encoding="utf-8") as f:
                    head = f.read()
            except OSError:
                pass
            unclear = unclear or state is not None or "refs/heads/autoresearch/" in head or \
                os.path.exists(os.path.join(candidate, common.LOG)) or \
                not os.path.isdir(os.path.join(candidate, ".git"))
    if not unclear:
        return None
    from core import session         # an ended session, a deleted switch or log: ask the log
    return session.active_root(payload)


class Session:
    """What this hook judges by: the root, the config, the protected paths and names."""

    def __init__(self, root):
        self.root = root
        self.config = self.read_config()
        view = read_json(os.path.join(root, common.STATE_DIR, "agent-sandbox.json")) or {}
        if not view.get("protected") or not view.get("names"):
            from core import agent_sandbox     # a session set up before the sandbox existed
            view = agent_sandbox.guard_view(root, self.config)
        self.protected = dict(view["protected"])
        self.names = view["names"]
        self.sealed = view.get("sealed") or []
        for folder in (os.environ.get("CLAUDE_CONFIG_DIR"), os.path.expanduser("~/.claude")):
            if folder:
                self.protected[os.path.realpath(folder)] = "settings"

    def read_config(self):
        try:
            with open(os.path.join(self.root, common.LOG), encoding="utf-8") as f:
                config = json.loads(f.readline())
            if isinstance(config, dict) and config.get("type") == "config":
                return config
        except (OSError, ValueError):
            pass
        from core import records        # the log is gone: its copy in git
        return records.read_config(self.root) or {}

    def kind(self, path):
        """The kind of protected path `path` (absolute, normalised) is, or None."""
        rel = os.path.relpath(path, self.root)
        inside = rel.split(os.sep)
        worktrees = common.WORKTREES.split(os.sep)
        if len(inside) > len(worktrees) + 1 and inside[:len(worktrees)] == worktrees:
            # A candidate's worktree is judged like the project itself.
            return self.kind(os.path.join(self.root, *inside[len(worktrees) + 1:]))
        for p, kind in self.protected.items():
            if path == p or path.startswith(p.rstrip(os.sep) + os.sep):
                return kind
        if rel.startswith(".."):
            return None
        for name, kind in self.names.items():
            if fnmatch.fnmatchcase(rel, name) or rel.startswith(name + os.sep):
                return kind
        return None

    def why(self, cwd, path):
        """Why `path`, as a tool call names it from `cwd`, may not be written, or None.
        Judged as written and with every link resolved; a glob by what it matches."""
        if re.search(r"[*?[]", path):
            import glob
            base = os.path.basename(path.rstrip("/"))
            names = [n for n in self.names if fnmatch.fnmatchcase(n, base)]
            for match in glob.glob(os.path.join(cwd, os.path.expanduser(path))) + names:
                reason = self.why(cwd if match not in names else self.root, match)
                if reason:
                    return reason
            return None
        full = os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))
        for candidate in dict.fromkeys((full, os.path.realpath(full))):
            kind = self.kind(candidate)
            inside = self.kind(os.path.realpath(candidate)) if kind is None else kind
            if inside:
                return self.reason(candidate, inside)
        return None

    def reason(self, path, kind):
        rel = os.path.relpath(path, self.root)
        shown = path if rel.startswith("..") else rel
        if kind == "harness":
            return (f"{shown} is part of the fixed harness (data, tokenizer, evaluation): every "
                    "run must be measured the same way, so it cannot change during a session. "
                    "Edit only the session's target template; if it was changed, resume-session "
                    "restores it.")
        if kind == "records":
            return (f"{shown} is written only by the plugin's scripts: record a run with "
                    "log-experiment, run one with run-experiment, write the report with "
                    "summarize. Reading it is fine.")
        if kind == "dependencies":
            return (f"{shown} declares the dependencies, which are fixed for a session: work "
                    "with the packages already installed.")
        if kind == "scope":
            files = ", ".join(common.editable_files(self.config)) if self.config.get("target") else "the target"
            return (f"{shown} is outside this session's scope ({files}): a run must measure "
                    "exactly the code the log records. Put the idea into the target, or note it "
                    "in autoresearch.md; a session that edits more files is set up with --scope.")
        what = {"git": "git's store (the session's branch, refs and the log's copy)",
                "settings": "Claude Code's settings, which load this guard and the sandbox",
                "plugin": "the plugin (its scripts and hooks, this guard included)",
                "environment": "the interpreter's environment: installing packages is not "
                               "allowed during a session"}.get(kind, kind)
        return (f"{shown} is {what}: it cannot change during a session. The loop changes only "
                "the session's target; git moves only through the scripts.")

    def mentioned(self, text):
        """A protected name `text` mentions once quotes, backslashes and string joins
        ('auto' + 'research.jsonl') are taken out, or None."""
        flat = re.sub(r"""['"]\s*\+\s*['"]|['"\\]""", "", text)
        names = [n for n in self.names if "*" not in n]
        names += [os.path.relpath(p, self.root) for p in self.protected
                  if not os.path.relpath(p, self.root).startswith("..")]
        names += [p for p in self.protected if os.path.relpath(p, self.root).startswith("..")]
        for name in sorted(set(names), key=len, reverse=True):
            if re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", flat):
                return name
        for word in re.findall(r"[\w.*?\[\]/-]+", flat):
            if re.search(r"[*?[]", word):
                for name in self.names:
                    if fnmatch.fnmatchcase(name, os.path.basename(word.rstrip("/"))):
                        return name
        return None


# ------------------------------------------------------------------ the tools

def check_file_tool(s, cwd, tool, tool_input):
    path = tool_input.get(FILE_TOOLS[tool])
    if not isinstance(path, str) or not path:
        return None
    return s.why(cwd, path)


SEPARATORS = {";", "&&", "||", "|", "&", "\n", "(", ")", "|&", ";;"}


def strip_comments(command):
    """The command without its shell comments (`#` at the start of a word, outside
    quotes, to the end of the line: shlex would take `# don't` for an open quote), its
    line breaks outside quotes made `;` (shlex takes them for spaces)."""
    out, quote, i = [], None, 0
    while i < len(command):
        c = command[i]
        if quote:
            if c == "\\" and quote == '"' and i + 1 < len(command):
                out.append(command[i:i + 2])
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "\\" and i + 1 < len(command):
            out.append(command[i:i + 2])
            i += 2
            continue
        elif c == "#" and (i == 0 or command[i - 1] in " \t\n;&|()"):
            end = command.find("\n", i)
            i = len(command) if end < 0 else end
            continue
        elif c == "\n":            # a new line ends a command, as ; does
            c = " ; "
        out.append(c)
        i += 1
    return "".join(out)


def simple_commands(command):
    """Split a shell command into simple commands (lists of words); quotes respected."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    words, out = [], []
    for token in lexer:
        if token in SEPARATORS or set(token) <= set(";&|"):
            if words:
                out.append(words)
            words = []
        else:
            words.append(token)
    if words:
        out.append(words)
    return out


SCRIPTS = {common.SCRIPTS_DIR, os.path.realpath(common.SCRIPTS_DIR)}


def check_script_call(command):
    """The plugin's scripts run outside the sandbox when a command starts with one of
    them (Claude Code matches them by path): anything around or inside such a call would
    run outside it too. So a call is the full path first, alone, with plain arguments."""
    if not any(d + os.sep in command for d in SCRIPTS):
        return None
    try:
        commands = simple_commands(strip_comments(command))
    except ValueError:
        commands = None
    if commands is not None:
        calls = [w for w in commands if strip_prefixes(w) and os.path.dirname(strip_prefixes(w)[0]) in SCRIPTS]
        if not calls:
            return None                     # named, not run: reading a script is fine
        plain = re.sub(r"'[^']*'", "''", command)      # in single quotes nothing expands
        if (len(commands) == 1 and os.path.dirname(commands[0][0]) in SCRIPTS
                and not re.search(r"[$`\\\n]", plain)
                and not re.search(r"[;&|<>()]", re.sub(r'"[^"]*"', '""', plain))):
            return None
    name = re.search(r"scripts/([\w-]+)", command)
    example = os.path.join(common.SCRIPTS_DIR, name.group(1) if name else "run-experiment")
    return ("the plugin's scripts run outside the sandbox only when called alone: their full "
            f"path first, plain arguments, nothing before or after (\"{example}\" --flag 'value'; "
            "no cd, no VAR=value, no &&, pipes, redirections or $ expansions). Run anything "
            "else as a command of its own.")


INSTALL = ("installing packages is not allowed during a session: the dependencies are fixed, "
           "so every run is comparable. Work with what is installed (see pyproject.toml); if an "
           "idea truly needs a new package, note it in autoresearch.md for the person to decide.")
PYTHON = re.compile(r"^(python|pypy|py)[\d.]*[mdu]?(\.exe)?$")
PIP = re.compile(r"^pip[\d.]*$")
PIP_READS = {"list", "show", "freeze", "check", "help", "debug", "inspect", "index", "search",
             "cache", "config", "hash", "completion", "--version", "-V", "-h", "--help"}
UV_READS = {"tree", "export", "version", "help", "--version", "-V", "-h", "--help", "run",
            "python", "cache", "self"}
MANAGERS = {  # program: the verbs that put packages into an environment
    **{p: {"install", "create", "update", "upgrade", "remove", "uninstall"}
       for p in ("conda", "mamba", "micromamba")},
    **{p: {"add", "install", "sync", "remove", "update", "upgrade", "lock", "i", "ci", "up",
           "dlx", "inject", "run"} for p in ("poetry", "pdm", "pipenv", "hatch", "rye", "npm",
                                              "pnpm", "yarn", "bun", "pixi")},
    **{p: {"install", "add", "upgrade", "reinstall"} for p in
       ("apt", "apt-get", "aptitude", "dnf", "yum", "brew", "port", "apk", "pacman", "zypper",
        "cargo", "gem", "go")},
}
FETCHERS = {"uvx", "pipx", "npx", "bunx", "pnpx", "easy_install", "conda-env"}
CODE_INSTALLS = re.compile(r"\b(pip[\d.]*|uv|conda|mamba|poetry)\b[^\n]*\binstall\b|\bensurepip\b|"
                           r"\bpip\._internal\b|\bpip\.main\b|\bsite\.addsitedir\b")


def installs(args):
    """Whether the command (prefixes stripped) installs packages, however it is spelled."""
    cmd, rest = os.path.basename(args[0]).lower(), args[1:]
    if PYTHON.match(cmd):                 # python -m pip / -mpip / -m ensurepip / -m uv ...
        for i, w in enumerate(rest):
            if w == "-m" and i + 1 < len(rest):
                return installs(rest[i + 1:]) or rest[i + 1] == "ensurepip"
            if w.startswith("-m") and len(w) > 2:
                return installs([w[2:], *rest[i + 1:]]) or w[2:] == "ensurepip"
            if not w.startswith("-"):
                break
        return False
    verbs = [w for w in rest if not w.startswith("-")]
    if PIP.match(cmd):
        return bool(verbs) and verbs[0] not in PIP_READS
    if cmd in FETCHERS:
        return True
    if cmd == "uv":
        if verbs[:1] == ["pip"]:
            return len(verbs) > 1 and verbs[1] not in PIP_READS
        if verbs[:1] == ["python"]:
            return len(verbs) > 1 and verbs[1] in ("install", "pin")
        return (bool(verbs) and verbs[0] not in UV_READS) or any(
            w.startswith(("--with", "--isolated")) for w in rest)
    return cmd in MANAGERS and bool(set(verbs[:2]) & MANAGERS[cmd])


PREFIXES = {"sudo", "command", "builtin", "env", "nohup", "time", "exec", "xargs", "noglob",
            "doas"}
WITH_VALUE = {"timeout", "nice", "ionice", "stdbuf", "setsid", "chrt", "taskset", "flock",
              "caffeinate", "unbuffer"}


PREFIX_VALUES = {"xargs": {"-a", "-I", "-L", "-n", "-P", "-s", "-d", "-E", "--arg-file",
                           "--delimiter", "--max-args", "--max-procs", "--max-lines"},
                 "env": {"-u", "-C", "-S", "--unset", "--chdir", "--split-string"},
                 "sudo": {"-u", "-g", "-C", "-D", "-h", "-p", "-U", "-r", "-t"},
                 "doas": {"-u", "-C"}}


def strip_prefixes(args):
    """The command word and its arguments, past VAR=value, sudo, env, nice, timeout, ..."""
    while args:
        w = os.path.basename(args[0])
        if re.match(r"^[A-Za-z_]\w*=", args[0]) or w in PREFIXES:
            args = args[1:]
            while args and args[0].startswith("-"):
                flag, args = args[0], args[1:]
                if flag in PREFIX_VALUES.get(w, ()) and args:
                    args = args[1:]
        elif w in WITH_VALUE:
            args = args[1:]
            while args and args[0].startswith("-"):
                flag, args = args[0], args[1:]
                if flag in ("-n", "-s", "-k", "-c", "-p", "-o", "-e", "-i") and args:
                    args = args[1:]
            if w in ("timeout", "chrt", "taskset", "flock") and args:
                args = args[1:]              # the duration, priority, mask or lock file
        else:
            break
    return args


WRITERS_ANY = {"rm", "mv", "tee", "truncate", "touch", "shred", "unlink", "chmod", "chown",
               "chattr", "setfacl", "ln", "link", "mkdir", "rmdir", "ed", "ex", "vi", "vim",
               "nvim", "nano", "emacs", "patch", "mkfifo", "mknod"}
WRITERS_LAST = {"cp", "install", "rsync", "scp", "split", "csplit"}   # the destination is written
IN_PLACE = {"sed", "gsed", "perl", "ruby", "awk", "gawk"}
CODE = re.compile(r"^(python|pypy|py)[\d.]*$|^(node|deno|bun|ruby|perl|php|lua|Rscript)$")
CODE_WRITES = re.compile(r"""open\((?:[^)]*,)?\s*(?:mode\s*=\s*)?['"][rbt]*[wax+][rbt+]*['"]|write|"""
                         r"""append|"""
                         r"""unlink|remove|rename|replace|rmtree|truncate|symlink|link\(|copy|"""
                         r"""move|chmod|mkdir|makedirs|['"]\+?>""")
GIT_MOVES = ("git {sub} moves the work tree behind the scripts' back, and the branch must stay "
             "on the last kept commit: log-experiment commits a keep and resets a discard or "
             "crash by itself, and resume-session restores the last kept commit (saving any "
             "change under refs/autoresearch/). To undo an edit of the target, "
             "`git show HEAD:<target> > <target>` (git's own store is read-only to your Bash).")
GIT_REFS = ("git {sub} here could delete or move the session's records (its branch, the "
            "refs/autoresearch/ refs that keep every tried commit and the log's copy): the "
            "scripts own them. Read them freely (git log, git show, git for-each-ref).")


VALUE_FLAGS = {"sed": "efl", "gsed": "efl", "perl": "eEIMmxCdD", "ruby": "eEIrCxFKTW"}


def in_place(cmd, rest):
    """Whether an editor is asked to edit its files in place, in any flag spelling:
    sed -i / -Ei / -i.bak / --in-place=x, perl -pi / -0pi / -0777pi.bak, ruby -pi,
    gawk -i inplace. In a cluster of flags, a flag that takes a value ends it."""
    if cmd in ("awk", "gawk"):
        return any(w in ("inplace", "--include=inplace") or w.startswith("-iinplace") for w in rest)
    for w in rest:
        if w.startswith(("--in-place", "--inplace")):
            return True
        if not w.startswith("-") or w.startswith("--"):
            continue
        for c in w[1:]:
            if c == "i":
                return True
            if c in VALUE_FLAGS[cmd]:
                break
    return False


def targets_of(s, cmd, rest, words):
    """The paths this simple command writes, as far as its words say."""
    paths = [w for w in rest if not w.startswith("-")]
    if cmd in WRITERS_ANY:
        return paths
    if cmd in WRITERS_LAST:
        if any(f in rest for f in ("-l", "-s", "--link", "--symbolic-link")) or \
                any(re.match(r"^-[A-Za-z]*[ls]", w) for w in rest):
            return paths                     # a link: its source is reached too
        return paths[-1:]
    if cmd in IN_PLACE and in_place(cmd, rest):
        return paths
    if cmd == "dd":
        return [w[3:] for w in rest if w.startswith("of=")]
    if cmd in ("sort", "shuf", "uniq"):
        return [rest[i + 1] for i, w in enumerate(rest[:-1]) if w == "-o"] + \
            [w.split("=", 1)[1] for w in rest if w.startswith("--output=")]
    return []


def check_git(s, cwd, rest):
    """A deny reason for a git command (its global options skipped), or the paths it writes."""
    while rest and rest[0].startswith("-"):
        opt, rest = rest[0], rest[1:]
        if opt == "-C" and rest:
            cwd = os.path.normpath(os.path.join(cwd, os.path.expanduser(rest[0])))
        if opt in ("-C", "-c", "--git-dir", "--work-tree", "--namespace", "--exec-path") and rest:
            rest = rest[1:]
    if not rest:
        return None, cwd, []
    sub, flags = rest[0], rest[1:]
    if sub in ("reset", "stash") or (sub == "clean" and not {"-n", "--dry-run"} & set(flags)):
        return GIT_MOVES.format(sub=sub), cwd, []
    deleting = {"-d", "-D", "--delete", "-m", "-M", "--move", "-f", "--force"}
    if (sub in ("update-ref", "symbolic-ref", "replace", "filter-branch", "filter-repo", "gc",
                "prune", "fetch", "pull", "config")
            and not (sub == "config" and ({"--get", "--list", "-l", "--get-all"} & set(flags)
                                          or len([f for f in flags if not f.startswith("-")]) == 1))
            and not (sub == "symbolic-ref" and len(flags) <= 1)
            or (sub == "branch" and deleting & set(flags))
            or (sub == "push" and ({"-d", "--delete", "-f", "--force", "--mirror", "--prune"} & set(flags)
                                   or any(f.startswith((":", "+")) for f in flags)))
            or (sub == "reflog" and flags[:1] in (["expire"], ["delete"]))
            or (sub == "worktree" and flags[:1] in (["remove"], ["prune"], ["move"]))
            or (sub == "tag" and "-d" in flags)):
        return GIT_REFS.format(sub=sub), cwd, []
    if sub in ("checkout", "restore", "switch"):
        if "--" in flags:
            revs = [f for f in flags[:flags.index("--")] if not f.startswith("-")]
            paths = flags[flags.index("--") + 1:]
        else:
            named = [f for f in flags if not f.startswith("-")]
            on_disk = sub != "switch" and named and "-b" not in flags and "-B" not in flags and \
                all(os.path.lexists(os.path.join(cwd, f)) for f in named)
            revs, paths = ([], named) if on_disk else (named or ["-"], [])
        source = any(f.startswith(("--source", "-s")) for f in flags)
        if (revs or source) and (not paths or any(s.why(cwd, p) for p in paths)):
            return (f"git {sub} of another commit or branch leaves the session's branch and the "
                    "fixed files behind the scripts' back: run resume-session, which restores "
                    "the last kept commit and checks the fixed files."), cwd, []
    if sub in ("rm", "mv", "apply", "am"):
        return None, cwd, [w for w in flags if not w.startswith("-")]
    return None, cwd, []


def check_find(s, cwd, rest):
    """find ... -delete / -exec: its start folders, and what its -name tests match."""
    if not {"-delete", "-exec", "-execdir", "-ok", "-okdir", "-fprint", "-fprintf"} & set(rest):
        return None
    starts = []
    for w in rest:
        if w.startswith("-") or w in ("(", "!", ")"):
            break
        starts.append(w)
    patterns = [rest[i + 1] for i, w in enumerate(rest[:-1])
                if w in ("-name", "-iname", "-path", "-ipath", "-wholename")]
    for start in starts or ["."]:
        reason = s.why(cwd, start)
        if reason:
            return reason
        folder = os.path.realpath(os.path.join(cwd, os.path.expanduser(start)))
        if not patterns and (os.path.realpath(s.root) + os.sep).startswith(folder.rstrip(os.sep) + os.sep):
            return ("find with -delete or -exec over the whole project would reach the session's "
                    "files: name what to delete (-name ...) or run it in a folder of your own.")
    for pattern in patterns:
        for name in s.names:
            if fnmatch.fnmatchcase(name, os.path.basename(pattern.rstrip("/"))):
                return s.why(s.root, name)
    return None


def check_bash(s, cwd, command, depth=0):
    reason = check_script_call(command)
    if reason:
        return reason
    try:
        commands = simple_commands(strip_comments(command))
    except ValueError:
        # The shell may read it otherwise (or reject it); fail closed on what this guard
        # protects: judged again with its quotes taken out, and refused if it names one.
        unquoted = re.sub(r"['\"]", " ", command)
        reason = check_bash(s, cwd, unquoted, depth + 1) if depth < 5 else None
        name = s.mentioned(command)
        if reason or name:
            return ("this command could not be parsed (an unbalanced quote?) and " +
                    (f"it names {name}, which the guard protects" if name else
                     f"read without its quotes it is refused: {reason}") + ". Write it so it parses.")
        return None
    for words in commands:
        if words[0] == "cd" and len(words) == 2:     # follow `cd dir && ...`
            cwd = os.path.normpath(os.path.join(cwd, os.path.expanduser(words[1])))
            continue
        reason = check_words(s, cwd, words, command, depth)
        if reason:
            return reason
    return None


SHELLS = {"bash", "sh", "zsh", "dash", "ksh", "fish"}


def check_words(s, cwd, words, command, depth):
    writes = []
    for i, w in enumerate(words[:-1]):           # >, >>, 2>, &>, >|
        if set(w) <= set(">&|0123456789") and ">" in w:
            writes.append(words[i + 1])
    args = strip_prefixes(list(words))
    if not args:
        args = []
    cmd, rest = (os.path.basename(args[0]), args[1:]) if args else ("", [])
    if args and installs(args):
        return INSTALL
    if cmd in SHELLS or cmd == "eval":
        inner = rest[rest.index("-c") + 1] if "-c" in rest and rest.index("-c") + 1 < len(rest) else \
            " ".join(rest) if cmd == "eval" else None
        if inner is not None and depth < 5:
            reason = check_bash(s, cwd, inner, depth + 1)
            if reason:
                return reason
    if CODE.match(cmd):                          # inline code: -c / -e, or a here-document
        flag = next((f for f in ("-c", "-e", "-E", "--eval") if f in rest), None)
        code = " ".join(rest[rest.index(flag) + 1:]) if flag else command
        if flag or "<<" in command or "-" in rest or not [w for w in rest if not w.startswith("-")]:
            if CODE_INSTALLS.search(code):
                return INSTALL
            if CODE_WRITES.search(code):
                for literal in re.findall(r"""['"]([^'"\s]+)['"]""", code):   # paths, links resolved
                    reason = s.why(cwd, literal)
                    if reason:
                        return reason
                name = s.mentioned(code)
                if name:
                    return (s.why(s.root, name) or
                            f"this code writes files and names {name}, which the guard protects.")
    if cmd == "find":
        reason = check_find(s, cwd, rest)
        if reason:
            return reason
    elif cmd == "git" and rest:
        reason, cwd, paths = check_git(s, cwd, rest)
        if reason:
            return reason
        writes += paths
    else:
        writes += targets_of(s, cmd, rest, words)
    # A write whose target the shell computes (a variable, braces, xargs, a substitution):
    # judged by the protected names the whole command mentions.
    indirect = "xargs" in words[:len(words) - len(args)] or any(re.search(r"[$`{]", w) for w in writes)
    if indirect or ("xargs" in words and cmd in WRITERS_ANY | WRITERS_LAST):
        name = s.mentioned(command)
        if name:
            return s.why(s.root, name) or f"this command may write {name}, which the guard protects."
    for t in writes:
        reason = s.why(cwd, t)
        if reason:
            return reason
    return None


# ------------------------------------------------------------------ the hook

def check_sealed(s, tool_input):
    """A call that names a file of the sealed test split: nothing reads it during a
    session (Claude Code's sandbox and its Read rule refuse it too)."""
    text = json.dumps(tool_input)
    for path in s.sealed:
        if path in text or os.path.basename(path) in text:
            return (f"{os.path.basename(path)} holds the sealed test split: no run and no command reads it "
                    "while the session is active. It is scored once, after the session ends "
                    "(summarize --test, finalize); work with the training split.")
    return None


def decide(payload):
    """The deny reason for this tool call, or None to allow it."""
    root = active_root(payload)
    if root is None:
        return None
    s = Session(root)
    cwd = payload.get("cwd") or os.getcwd()
    tool, tool_input = payload.get("tool_name"), payload.get("tool_input") or {}
    reason = check_sealed(s, tool_input)
    if reason is None and tool in FILE_TOOLS:
        reason = check_file_tool(s, cwd, tool, tool_input)
    elif reason is None and tool == "Bash" and isinstance(tool_input.get("command"), str):
        reason = check_bash(s, cwd, tool_input["command"])
    if reason:
        state = read_json(os.path.join(root, common.STATE_DIR, "state.json")) or {}
        if not (state.get("owner") and state.get("owner") == payload.get("session_id")):
            # Someone working on something else while a session is open: say how to close it.
            from core import session
            reason += " " + session.open_elsewhere_note(s.config)
    return reason


def failed_closed(payload, error):
    if not isinstance(payload, dict):
        return None
    text = json.dumps(payload.get("tool_input") or {})
    names = ("autoresearch.jsonl", "results.tsv", "run.log", ".autoresearch", "prepare.py",
             "dataset_cache.py", "data_sources.py", "datasets", ".git", ".claude", "experiment-plugin")
    name = next((n for n in names if n in text), None)
    return (f"this tool call could not be checked ({error}) and it names {name}, which the "
            "guard protects: nothing was done." if name else None)


def main():
    payload = None
    try:
        payload = json.load(sys.stdin)
        reason = decide(payload)
    except Exception as e:
        # A broken guard must not wedge the session, nor open what it protects: a call
        # that names a protected file is denied, anything else allowed, both said.
        reason = failed_closed(payload, e)
        if not reason:
            print(f"autoresearch guard: could not check this tool call ({e}); allowing it",
                  file=sys.stderr)
            return 0
    if reason:
        print(json.dumps({"hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": f"autoresearch guard: {reason}",
        }}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
