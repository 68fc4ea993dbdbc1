"""The measurement, out of the target's hands: the harness's result channel and the
checks a run's result must pass before its value is judged.

A session on this project's harness (prepare.py with its RunReport) is measured by
the harness: the run writes one JSON document to a pipe only the harness holds (see
prepare.py's docstring), and setup pins what an honest evaluation reads (`eval`:
tokens, bytes, rows, digest of the token ids). What the target prints is shown,
never judged. A result that does not match is `invalid`, with the reason.

A session on another harness (one that has no channel) is measured from the run's
output, and says so at setup: there a target can print any number.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time

from .common import UserError

CHANNEL_ENV = "AUTORESEARCH_RESULT_FD"
EVAL_TOKENS_ENV = "AUTORESEARCH_EVAL_TOKENS"
# Variables a run never inherits from the caller: the channel is the runner's to
# open, and the eval size is the one pinned at setup (the runner sets it).
STRIPPED_ENV = (CHANNEL_ENV, EVAL_TOKENS_ENV)
PINNED = ("tokens", "bytes", "rows", "digest")
# The harness's summary numbers, under the names its printed summary block uses.
SUMMARY = ("training_seconds", "total_seconds", "eval_seconds", "train_peak_mb", "peak_memory_mb",
           "mfu_percent", "avg_tok_sec", "num_steps", "depth", "dmodel_scale", "final_train_loss")


def harness_measures(root: str, target: str) -> bool:
    """Whether runs of `target` here can be measured by the harness: prepare.py has
    the result channel and the target reports through its RunReport."""
    try:
        with open(os.path.join(root, "prepare.py"), encoding="utf-8") as f:
            harness = f.read()
        with open(os.path.join(root, target), encoding="utf-8") as f:
            code = f.read()
    except OSError:
        return False
    return CHANNEL_ENV in harness and "RunReport" in code


def pin_eval(root: str, python: str, dataset: str) -> dict:
    """What an honest evaluation on `dataset` reads, from the harness itself."""
    # AUTORESEARCH_EVAL_TOKENS, if the caller set it, lowers the eval set for the whole
    # session (a slow machine's choice, recorded in the config); it can never raise it.
    proc = subprocess.run([python, "-B", "prepare.py", "--dataset", dataset, "--eval-fingerprint"],
                          cwd=root, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != CHANNEL_ENV})
    try:
        pin = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"prepare.py --eval-fingerprint failed ({last}): check the dataset "
                        f"with python prepare.py --dataset {dataset} --verify") from None
    out = {k: pin[k] for k in ("dataset", "eval_tokens", "max_seq_len", "vocab_size", *PINNED)}
    if not pin.get("test_split"):
        raise UserError(f"the {dataset} cache has no sealed test split (it was prepared before there was "
                        f"one): run python prepare.py --dataset {dataset} to add it; what it has is kept")
    out["test_split"] = pin["test_split"]
    if pin.get("cache_dir"):
        out.update(cache_dir=pin["cache_dir"], cache_state=cache_state(pin["cache_dir"]))
    return out


def cache_state(folder: str) -> str:
    """One digest of every file in the dataset cache: its path, size and change time.
    The change time (ctime) moves with every write, rename or utime and cannot be set
    back, so a shard swapped for one of the same size (validation text in a training
    shard), or a manifest rewritten, shows; nothing is read or hashed, so it costs a
    stat per file."""
    import hashlib
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            h.update(f"{os.path.relpath(path, folder)}\0{st.st_size}\0{st.st_ctime_ns}\n".encode())
    return h.hexdigest()


def cache_changed(config: dict) -> bool:
    """Whether the dataset cache the session pinned changed since setup."""
    pin = config.get("eval") or {}
    return bool(pin.get("cache_state")) and cache_state(pin["cache_dir"]) != pin["cache_state"]


HEADER_LIMIT = 1 << 16


def read_header(fd: int) -> dict:
    """One JSON header line from the channel, bounded (a flood is an error)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        b = os.read(fd, 1)
        if not b:
            raise EOFError("closed")
        line += b
        if len(line) > HEADER_LIMIT:
            raise ValueError("oversized header")
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


class ServedRun:
    """The runner's end of a measured run: a socket the run's harness holds, the
    runner's clock, and the evaluation served from a process of the runner's.

    The run trains until its harness asks for the evaluation (evaluate_bpb): that
    moment, on this clock, ends its training time. The runner then starts the
    harness's serve_evaluation in a fresh interpreter (`python -I`, the harness
    loaded from the bytes pinned at setup, an environment of its own, the session's
    dataset cache), which serves the validation and probe rows over the socket,
    scores the losses and prints the result; past `eval_limit` seconds it is killed
    and the run is invalid. Last, the harness's report (its summary numbers) comes
    on the same socket. Nothing the run prints or writes elsewhere is read."""

    def __init__(self, root: str, config: dict, launch: str, eval_limit: float | None = None,
                 test: bool = False):
        # Scoring the sealed test split too (a session's end only) serves twice the rows.
        self.root, self.config, self.launch, self.test = root, config, launch, test
        self.eval_limit = eval_limit * 2 if eval_limit and test else eval_limit
        self.parent, self.child = socket.socketpair()
        self.requested = self.eval_seconds = self.evaluation = self.report = self.why = None
        self.violation = None       # a rule the runner enforces was broken: invalid, however the run ended
        self.thread = self.group = None     # the run's process group, once started

    def child_env(self) -> dict:
        return {CHANNEL_ENV: str(self.child.fileno()), EVAL_TOKENS_ENV: str(self.config["eval"]["eval_tokens"])}

    def start(self, started: float) -> "ServedRun":
        """Call once the run is started (its copy of the socket is its own now)."""
        self.child.close()
        self.started = started
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def _serve(self):
        """Read the run's messages until it closes the channel: one request for the
        evaluation (served at once), then its report. Anything else, or in another
        order, is recorded as the reason the result cannot be judged."""
        fd = self.parent.fileno()
        while True:
            try:
                message = read_header(fd)
            except (EOFError, OSError, ValueError):
                return
            op = message.get("op")
            if op == "eval" and self.requested is None and self.report is None:
                self.requested = time.monotonic() - self.started
                self._evaluate(message.get("batch_size"))
            elif op == "report" and self.report is None:
                self.report = message
                if self.requested is None and message.get("status") != "failed":
                    self.why = self.violation = "the run reported before it asked the runner for its evaluation"
                    return self._hang_up()
            else:
                self.why = self.violation = self.why or f"an unexpected {str(op)[:20]!r} message on the channel"
                return self._hang_up()

    def _hang_up(self):
        """A broken rule ends the conversation: the run sees the channel close (its
        evaluate_bpb fails at once) instead of waiting for an answer until its timeout."""
        try:
            self.parent.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _evaluate(self, batch_size):
        if not isinstance(batch_size, int) or batch_size < 1:
            self.why = f"evaluate_bpb asked for batch_size {batch_size!r}"
            return
        pin, fd = self.config["eval"], self.parent.fileno()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.path.expanduser("~"),
               "LANG": "C.UTF-8", "AUTORESEARCH_DATASET": self.config["dataset"],
               "AUTORESEARCH_EVAL_TOKENS": str(pin["eval_tokens"]), "AUTORESEARCH_QUIET": "1"}
        if pin.get("cache_dir"):
            env["AUTORESEARCH_CACHE"] = os.path.dirname(pin["cache_dir"])
        command = [self.config["python"], "-I", "-B", self.launch, self.root, "--evaluate",
                   json.dumps(self.config["fixed_files"]), str(fd), str(batch_size)] + (["test"] if self.test else [])
        began = time.monotonic()
        proc = subprocess.Popen(command, cwd=self.root, env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=self.eval_limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            self.why = self.violation = (f"the evaluation ran past its limit of {self.eval_limit:.0f} s (pinned "
                                         "from the baseline's): evaluate the model as trained, no more")
            self.parent.shutdown(socket.SHUT_RDWR)
            if self.group:              # whatever the run does meanwhile, it is invalid: no need to wait
                try:
                    os.killpg(self.group, signal.SIGKILL)
                except OSError:
                    pass
            return
        self.eval_seconds = time.monotonic() - began
        lines = out.decode("utf-8", "replace").strip().splitlines()
        try:
            self.evaluation = json.loads(lines[-1])
        except (IndexError, ValueError):
            last = (err.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1]
            self.why = f"the evaluation did not complete ({last[:200]})"

    def close(self):
        """A run that never started: both ends of the channel, closed."""
        self.child.close()
        self.parent.close()

    def finish(self) -> "ServedRun":
        """After the run has ended: the last of the channel, then close it."""
        if self.thread is not None:
            self.thread.join(timeout=10)
        self.parent.close()
        return self

    def summary(self) -> str:
        """The runner's account of the run, for the end of run.log."""
        if self.requested is None:
            return "runner: the run never asked for its evaluation"
        lines = [f"runner: the run asked for its evaluation after {self.requested:.1f} s"]
        ev = self.evaluation or {}
        if ev:
            e, p, r = ev["eval"], ev["eval"]["probe"], ev["eval"]["replay"]
            lines.append(f"runner: served {e['rows']} validation rows, {p['rows']} probe rows and {r['rows']} "
                         f"replays in {e['served_rows'] // e['batch_size']} batches of {e['batch_size']} "
                         f"({self.eval_seconds:.1f} s): val_bpb {ev['val_bpb']:.6f}")
            lines.append(f"runner: probe z {p['z']} +/- {p['z_se']} (1 for a model's cross-entropy), "
                         f"nats {p['nats']} +/- {p['nats_se']} (>= {p['floor']}), replay diff {r['max_diff']}"
                         + (f": {ev['probe_verdict']}" if ev.get("probe_verdict") else ""))
        if self.why:
            lines.append(f"runner: {self.why}")
        return "\n".join(lines)


def allowances(config: dict, pins: dict | None) -> tuple[float, float | None]:
    """(startup allowance, evaluation limit) in seconds for a run of this session.

    The allowance is what the baseline spent before its training counted (imports,
    data, compilation, untimed warm-up steps), doubled, plus a margin; it is
    pinned by the session's first measured ok run and capped, so that no run can
    buy itself a longer budget. The evaluation may take three times the
    baseline's, plus a margin: a bigger model evaluates slower, but training
    hidden inside the evaluation finds little room. Until the pin, the cap and no
    limit but the run's timeout."""
    budget = config["budget"]
    cap = max(60.0, 0.5 * budget)
    if not pins:
        return cap, None
    return pins["startup_allowance_s"], pins["eval_limit_s"]


# The evaluation's margin over three times the baseline's: it starts a process that loads
# the harness and packs the validation rows, which on a busy machine alone can take 10 s.
EVAL_MARGIN_S = 20.0


def pin_from(config: dict, served: "ServedRun") -> dict:
    """The pins a baseline run sets: its startup allowance and evaluation limit."""
    budget = config["budget"]
    overhead = max(0.0, served.requested - budget)
    allowance = min(max(60.0, 0.5 * budget), 2 * overhead + max(5.0, 0.05 * budget))
    return {"startup_allowance_s": round(allowance, 1),
            "eval_limit_s": round(3 * (served.eval_seconds or 0) + max(EVAL_MARGIN_S, 0.05 * budget), 1),
            "baseline_seconds_to_eval": round(served.requested, 1)}


def check(config: dict, served: "ServedRun | None", pins: dict | None = None) -> tuple[str | None, dict]:
    """The reason a served run's result cannot be judged (None when it can), and the
    metrics it carries: the runner's val_bpb, its own clock, the harness's summary."""
    if served is None or (served.report is None and served.requested is None):
        return "no result from the harness (the run ended before it asked for its evaluation)", {}
    report = served.report or {}
    if report.get("status") == "failed" and served.requested is None:
        return None, {}                         # a failed run: its output tells why
    if served.requested is None:
        return "the run reported without asking the runner for its evaluation (evaluate_bpb)", {}
    allowance, _ = allowances(config, pins)
    budget = config["budget"]
    if served.requested > budget + allowance:
        served.violation = "over budget"
        return (f"trained for {served.requested:.1f} s before asking for its evaluation: the budget is "
                f"{budget:g} s plus a startup allowance of {allowance:.1f} s "
                f"({'pinned from the baseline' if pins else 'the cap, before the baseline pins it'}); "
                "every step before the evaluation counts, warm-up included"), {}
    if served.why:
        return served.why, {}
    evaluation = served.evaluation or {}
    evaluated, harness = evaluation.get("eval") or {}, report.get("harness") or {}
    if harness and (harness.get("dataset") != config["dataset"] or harness.get("time_budget_s") != budget):
        return (f"the run's harness measured {harness.get('dataset')} with a {harness.get('time_budget_s')} s "
                f"budget, expected {config['dataset']} with {budget:g} s"), {}
    pin = config["eval"]
    for key in PINNED:
        if evaluated.get(key) != pin[key]:
            return (f"eval: {key} {str(evaluated.get(key))[:16]}, expected {str(pin[key])[:16]} "
                    "(the validation data changed since setup)"), {}
    if evaluation.get("probe_verdict"):
        return f"the evaluation's losses are not the model's cross-entropy: {evaluation['probe_verdict']}", {}
    served_val = (report.get("served") or {}).get("val")
    if served_val:
        return f"the template's loader served {served_val:,} validation tokens (train only on train)", {}
    metrics = {"val_bpb": evaluation["val_bpb"]}
    if report.get("status") == "ok":
        metrics.update({k: report[k] for k in SUMMARY if report.get(k) is not None})
        if report.get("total_tokens") is not None:
            metrics["total_tokens_M"] = report["total_tokens"] / 1e6
        if report.get("num_params") is not None:
            metrics["num_params_M"] = report["num_params"] / 1e6
    metrics["seconds_to_eval"] = round(served.requested, 2)
    if served.eval_seconds is not None:
        metrics["eval_seconds"] = round(served.eval_seconds, 2)
    return None, metrics
