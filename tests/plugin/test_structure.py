"""The plugin's structure: the library's layers, commands that stay thin, and one
keep rule whose numbers the documentation states exactly."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import LAYERS
from plugin_helpers import PLUGIN, SCRIPTS


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """(module, line) for every import in a file: `from .x import`, `from . import x`
    and `from core import x` become x; `import x` stays x."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level and node.module:
                out.append((node.module.split(".")[0], node.lineno))
            elif node.level or node.module == "core":
                out += [(a.name, node.lineno) for a in node.names]
            elif node.module and node.module.startswith("core."):
                out.append((node.module.split(".")[1], node.lineno))
            elif node.module:
                out.append((node.module.split(".")[0], node.lineno))
    return out


def layer_violations(scripts: Path, hooks: Path) -> list[str]:
    """What breaks the rules: a core module importing one at or above its own layer
    (a cycle needs one), a module of core missing from LAYERS, a command or hook
    importing a command module."""
    core = scripts / "core"
    found = []
    modules = sorted(p.stem for p in core.glob("*.py") if p.stem != "__init__")
    found += [f"core/{m}.py is not in core.LAYERS" for m in modules if m not in LAYERS]
    for m in modules:
        if m not in LAYERS:
            continue
        for dep, line in imported_modules(core / f"{m}.py"):
            if dep in LAYERS and LAYERS.index(dep) >= LAYERS.index(m):
                found.append(f"core/{m}.py:{line} imports {dep}, a layer at or above its own")
    commands = {p.stem for p in scripts.glob("*.py")}
    for path in [*scripts.glob("*.py"), *hooks.glob("*.py")]:
        for dep, line in imported_modules(path):
            if dep in commands:
                found.append(f"{path.name}:{line} imports the command module {dep}")
    return found


def test_the_library_is_layered_and_commands_do_not_import_commands():
    assert layer_violations(SCRIPTS, PLUGIN / "hooks") == []
    sizes = {p.name: len(p.read_text().splitlines()) for p in (SCRIPTS / "core").glob("*.py")}
    assert max(sizes.values()) <= 500, sizes
    assert not (SCRIPTS / "experiment_lib.py").exists()


@pytest.mark.parametrize("where,line", [
    ("core/records.py", "from .session import state_block\n"),     # a cycle: session imports records
    ("core/common.py", "from . import waves\n"),
    ("log_experiment.py", "import run_experiment\n"),
])
def test_the_layer_check_catches_a_cycle_and_a_command_import(tmp_path, where, line):
    scripts = tmp_path / "scripts"
    shutil.copytree(SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PLUGIN / "hooks", tmp_path / "hooks", ignore=shutil.ignore_patterns("__pycache__"))
    assert layer_violations(scripts, tmp_path / "hooks") == []
    path = scripts / where
    path.write_text(path.read_text() + line)
    assert layer_violations(scripts, tmp_path / "hooks")


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def test_the_scripts_and_hooks_write_nothing_into_the_plugin(tmp_path):
    """An installed plugin is Claude Code's copy: running every script and hook (under
    a plain interpreter, bytecode caching on) leaves its folder as it was."""
    plugin = tmp_path / "plugin"
    shutil.copytree(PLUGIN / "scripts", plugin / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PLUGIN / "hooks", plugin / "hooks", ignore=shutil.ignore_patterns("__pycache__"))
    before = files_under(plugin)
    entry_points = [p for p in (plugin / "scripts").iterdir() if p.is_file() and p.suffix != ".py"]
    assert len(entry_points) >= 10
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for path in [*entry_points, plugin / "scripts" / "wave_worker.py"]:
        proc = subprocess.run([sys.executable, str(path), "--help"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (path.name, proc.stderr[-1000:])
    for path in (plugin / "hooks").glob("*.py"):
        payload = {"session_id": "s", "cwd": str(tmp_path), "hook_event_name": "Stop",
                   "tool_name": "Write", "tool_input": {"file_path": str(tmp_path / "x")}, "prompt": "hi"}
        proc = subprocess.run([sys.executable, str(path)], input=json.dumps(payload), cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (path.name, proc.stderr[-1000:])
    assert files_under(plugin) - before == set()
