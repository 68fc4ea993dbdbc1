"""The first code a measured run executes: it loads the fixed harness from verified
bytes, then runs the target as __main__.

    python launch.py ROOT TARGET PINS_JSON
    python launch.py ROOT --evaluate PINS_JSON FD BATCH_SIZE   (the runner's evaluation)

PINS_JSON is the session's fixed files with the sha256 of each, recorded at setup;
the top-level .py files among them (prepare.py, data_sources.py, ...) are the fixed
modules. Why a launcher rather than `python train.py`:

- The harness is imported before one line of the target runs, so the harness, not
  the target, takes the result channel (AUTORESEARCH_RESULT_FD leaves the
  environment at that import) and seals its own names.
- The fixed modules are compiled from the bytes whose hash was just checked, never
  from a .pyc and never from whatever the import path finds first: a `prepare/`
  package or a planted __pycache__ beside prepare.py is never imported, and a
  prepare.py rewritten while the run goes (and restored before it ends) changes
  nothing that runs. A reload checks the hash again.

Standard library only: it runs under the session's interpreter, and imports nothing
from the plugin.
"""
import hashlib
import importlib.abc
import importlib.util
import json
import os
import runpy
import sys


class FixedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the fixed top-level modules first, and loads each from its checked source."""

    def __init__(self, root, pins):
        self.root = root
        self.pins = {os.path.splitext(f)[0]: sha for f, sha in pins.items()
                     if f.endswith(".py") and "/" not in f}

    def find_spec(self, name, path=None, target=None):
        if name not in self.pins:
            return None
        origin = os.path.join(self.root, name + ".py")
        return importlib.util.spec_from_file_location(name, origin, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__spec__.name
        path = os.path.join(self.root, name + ".py")
        with open(path, "rb") as f:
            source = f.read()
        if hashlib.sha256(source).hexdigest() != self.pins[name]:
            raise ImportError(f"{name}.py changed since the session was set up: the fixed "
                              "harness is not loaded (tampered)")
        exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)


def main(argv):
    if argv[2] == "--evaluate":
        return evaluate(argv[1], json.loads(argv[3]), int(argv[4]), int(argv[5]), test=argv[6:] == ["test"])
    root, target, pins = argv[1], argv[2], json.loads(argv[3])
    sys.dont_write_bytecode = True
    sys.meta_path.insert(0, FixedModules(root, pins))
    sys.path[0] = root
    sys.argv = [target]
    if "prepare.py" in pins:
        import prepare  # noqa: F401  (the harness takes its channel before the target runs)
    runpy.run_path(os.path.join(root, target), run_name="__main__")


def evaluate(root, pins, fd, batch_size, test=False):
    """The runner's evaluation of a run: the harness's serve_evaluation, loaded from
    the same verified bytes, talks to the run over `fd` and prints its result as one
    JSON line. No code of the target's runs in this process. `test` (a session's
    end-of-session scoring only) deals the sealed test rows in among the validation rows."""
    sys.dont_write_bytecode = True
    sys.meta_path.insert(0, FixedModules(root, pins))
    sys.path[0] = root
    import prepare
    result = prepare.serve_evaluation(fd, batch_size, test=test)
    verdict = prepare.probe_verdict(result["eval"]["probe"], result["eval"]["replay"])
    print(json.dumps(dict(result, probe_verdict=verdict)), flush=True)


if __name__ == "__main__":
    main(sys.argv)
