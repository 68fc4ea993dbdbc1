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
import subprocess

from .common import UserError

CHANNEL_ENV = "AUTORESEARCH_RESULT_FD"
EVAL_TOKENS_ENV = "AUTORESEARCH_EVAL_TOKENS"
# Variables a run never inherits from the caller: the channel is the runner's to
# open, and the eval size is the one pinned at setup (the runner sets it).
STRIPPED_ENV = (CHANNEL_ENV, EVAL_TOKENS_ENV)
PINNED = ("tokens", "bytes", "rows", "digest")
# The probe's bound (prepare._probe): any model averages at least ln V nats on random
# next tokens; the margin leaves room for the sample's spread (~1,000 tokens).
PROBE_MARGIN = 0.9
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


def documents(data: bytes) -> list:
    """The JSON documents a run wrote to its channel, one per line (a line that is
    not a JSON object is kept as None, and makes the result invalid)."""
    out = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            out.append(doc if isinstance(doc, dict) else None)
    return out


def check(config: dict, docs: list) -> tuple[str | None, dict]:
    """The reason a run's channel result cannot be judged (None when it can), and the
    metrics it carries (the harness's own val_bpb and its summary numbers)."""
    if not docs:
        return "no result from the harness (the run ended before RunReport.finish)", {}
    if len(docs) > 1:
        return f"{len(docs)} results on the harness's channel (one is written per run)", {}
    doc = docs[0]
    if doc is None or doc.get("version") != 1:
        return "the harness's result is not a version-1 document", {}
    if doc.get("status") != "ok":
        return None, {}                         # a failed run: its output tells why
    pin, evaluated = config["eval"], doc.get("eval") or {}
    harness = doc.get("harness") or {}
    if harness.get("dataset") != config["dataset"] or harness.get("eval_tokens") != pin["eval_tokens"]:
        return (f"measured on {harness.get('dataset')} with {harness.get('eval_tokens')} eval tokens, "
                f"expected {config['dataset']} with {pin['eval_tokens']}"), {}
    if harness.get("time_budget_s") != config["budget"]:
        return f"trained for a {harness.get('time_budget_s')} s budget, expected {config['budget']:g} s", {}
    if doc.get("val_bpb") is None or doc.get("val_bpb_source") != "harness":
        return "the reported val_bpb is not the one the harness's evaluate_bpb returned", {}
    if evaluated.get("calls") != 1:
        return f"evaluate_bpb ran {evaluated.get('calls')} times (an honest run evaluates once)", {}
    for key in PINNED:
        if evaluated.get(key) != pin[key]:
            shown = (f"{evaluated.get(key):,}" if isinstance(evaluated.get(key), int)
                     else str(evaluated.get(key))[:12])
            want = f"{pin[key]:,}" if isinstance(pin[key], int) else str(pin[key])[:12]
            return (f"eval: {key} {shown}, expected {want} (evaluate with a batch size that "
                    f"divides {pin['rows']} rows)" if key == "rows" else
                    f"eval: {key} {shown}, expected {want}"), {}
    probe = evaluated.get("probe") or {}
    if not probe or probe.get("nats") is None or probe["nats"] < PROBE_MARGIN * probe["floor"]:
        return (f"the evaluation's losses are not the model's cross-entropy: on random next tokens "
                f"they average {probe.get('nats')} nats, below ln(vocab) = {probe.get('floor')}, "
                "which no model can"), {}
    served = (doc.get("served") or {}).get("val")
    if served:
        return f"the template's loader served {served:,} validation tokens (train only on train)", {}
    metrics = {"val_bpb": doc["val_bpb"]}
    metrics.update({k: doc[k] for k in SUMMARY if doc.get(k) is not None})
    if doc.get("total_tokens") is not None:
        metrics["total_tokens_M"] = doc["total_tokens"] / 1e6
    if doc.get("num_params") is not None:
        metrics["num_params_M"] = doc["num_params"] / 1e6
    return None, metrics
