"""THE metric parser: a run's summary block, `METRIC name=value` lines, a
`last_run.json`, or the session's --metric-pattern, turned into numbers. Every script
that reads a run's numbers calls `parse_metrics`. It also knows how the usual
trainers print a metric (`propose_pattern`), so that a script of one's own can be
read as it is.
"""
from __future__ import annotations

import json
import math
import re

from .common import UserError

# last_run.json keys -> the summary block's names for the same numbers, so a run reads
# the same from either source. Files written before the keys followed the original
# autoresearch said tok_per_sec (and num_steps, already the summary's name).
_RECORD_ALIASES = {"total_steps": "num_steps", "tok_per_sec": "avg_tok_sec",
                   "training_peak_mb": "train_peak_mb"}

# What run-experiment and wait-wave show of a run beside the metric. Memory goes by
# two names: this project's templates say peak_memory_mb, karpathy/autoresearch's
# train.py peak_vram_mb.
MEMORY_KEYS = ("peak_memory_mb", "peak_vram_mb")
SHOWN = (*MEMORY_KEYS, "avg_tok_sec", "mfu_percent", "num_steps", "training_seconds")


def memory_mb(metrics: dict):
    """A run's peak memory in MB under whichever name it was printed, else None."""
    return next((metrics[k] for k in MEMORY_KEYS if isinstance(metrics.get(k), (int, float))
                 and not isinstance(metrics.get(k), bool)), None)


_METRIC_LINE = re.compile(r"^METRIC\s+([A-Za-z_][\w.\-]*)\s*=\s*(\S+)\s*$")
_SUMMARY_LINE = re.compile(r"^([A-Za-z_][\w.\-]*):\s+(\S.*?)\s*$")


def _value(text: str):
    """'1,660,000' -> 1660000, '0.9979' -> 0.9979, 'nan' -> nan, 'n/a' -> 'n/a'."""
    t = text.strip().replace(",", "").replace("_", "")
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return text.strip()


def parse_metrics(text: str, pattern: str | None = None, name: str | None = None) -> dict:
    """THE metric parser: every script that needs numbers from a run calls this.

    Accepts, in one string:
      * the template's summary block: a line `---` then `name:   value` lines (the
        last block wins, so a log with several runs reports the latest);
      * `METRIC name=value` lines anywhere (they override the block);
      * a `last_run.json` document: its `result` section, then `training` for keys
        `result` lacks; `total_steps`, `avg_tok_sec` (`tok_per_sec` in older files) and
        `training_peak_mb` also appear under the summary block's names.
    Values become int or float where they parse ('1,660,000' included); 'nan' stays a
    float NaN; anything else ('n/a') stays a string.

    With a session's `pattern` (setup --metric-pattern), the metric `name` is the last
    match of the pattern in the text and nothing else: a training log prints its
    validation loss many times, and the last one is the result.
    """
    if pattern:
        metrics = parse_metrics(text)
        metrics.pop(name, None)
        found = pattern_value(text, pattern, name)
        return {**metrics, name: found} if found is not None else metrics
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            out = {}
            for section in ("training", "result"):
                for k, v in (doc.get(section) or {}).items():
                    if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                        out[k] = _value(v) if isinstance(v, str) else v
            for k, v in (doc.get("metrics") or {}).items():
                out.setdefault(k, v)
            for k, alias in _RECORD_ALIASES.items():
                if k in out:
                    out.setdefault(alias, out[k])
            return out
    metrics: dict = {}          # from METRIC lines, anywhere
    last_block: dict = {}       # the most recent complete summary block
    block: dict | None = None   # the block being read, after a `---` line
    for line in text.splitlines():
        s = line.strip()
        m = _METRIC_LINE.match(s)
        if m:
            metrics[m.group(1)] = _value(m.group(2))
            continue
        if s == "---":
            block = {}
            continue
        if block is not None:
            m = _SUMMARY_LINE.match(s)
            if m:
                block[m.group(1)] = _value(m.group(2))
                last_block = block
            else:
                block = None    # the block ended; a later `---` may start another
    return {**last_block, **metrics}


def pattern_value(text: str, pattern: str, name: str):
    """The value of the pattern's last match: its group named after the metric (or
    `value`), else its first group. None where it never matches."""
    rx = re.compile(pattern, re.MULTILINE)
    last = None
    for last in rx.finditer(text):
        pass
    if last is None:
        return None
    groups = last.groupdict()
    key = next((k for k in (group_name(name), "value") if k in groups), None)
    return _value(last.group(key) if key else last.group(1))


def group_name(metric: str) -> str:
    """A metric's name as a regex group may spell it (val-acc -> val_acc)."""
    return re.sub(r"\W", "_", metric)


def check_pattern(pattern: str) -> re.Pattern:
    """A --metric-pattern that compiles and captures the number, or one line on how."""
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise UserError(f"--metric-pattern {pattern!r} is not a regular expression ({e}): "
                        "e.g. 'val loss ([0-9.]+)'")
    if rx.groups < 1:
        raise UserError(f"--metric-pattern {pattern!r} has no group: put parentheses around "
                        "the number, e.g. 'val loss ([0-9.]+)'")
    return rx


# How the usual trainers print a metric, and the pattern that reads it back. Setup
# looks for these in the target's source (no run needed) and proposes the first that
# fits. `{k}` is the metric's name as a regex, `{w}` the same with spaces for '_'.
# `\b` before the name keeps `val_loss` from matching inside `best_val_loss`.
NUMBER = r"([-+]?[0-9][0-9.e+-]*|nan|inf)"     # 2.1234, 5e-05, nan
SHAPES = (
    # `print(f"step {i}: train loss {t:.4f}, val loss {v:.4f}")`, nanoGPT's shape
    ("`{words} X`", r"(?<![\w.]){w}:?\s*[{{%\"']", r"\b{w}:? " + NUMBER),
    # Lightning's `self.log("val_loss", ...)`: `val_loss=X` in the progress bar,
    # `'val_loss': X` in the dict trainer.validate returns, `│ val_loss │ X │` in its table
    ("Lightning's logged `{name}`", r"\.log(?:_dict)?\(\s*\{{?\s*[\"']{k}[\"']",
     r"""\b{k}(?:=|['"]: |\s*│\s*)""" + NUMBER),
    # `print(f"val_loss={v:.4f}")`, `print(f"{val_loss=}")`
    ("`{name}=X`", r"(?<![\w.]){k}=[{{%\"']|\{{{k}=", r"\b{k}=" + NUMBER),
    # `print({'val_loss': v})`, json.dumps, Hugging Face's Trainer logs
    ("`'{name}': X`", r"[\"']{k}[\"']\s*:", r"""['"]{k}['"]: '?""" + NUMBER),
    # `print(f"val_acc: {v}")` without the summary block's `---`; Keras's progress lines
    ("`{name}: X`", r"(?<![\w.]){k}:\s*[{{%\"']", r"\b{k}: " + NUMBER),
)
DICT_SHAPE, COLON_SHAPE = SHAPES[3][2], SHAPES[4][2]


def _rx(text: str) -> str:
    """A name as a regex that still reads as the name (spaces stay spaces)."""
    return re.escape(text).replace("\\ ", " ")


def propose_pattern(code: str, metric: str, framework: str | None = None):
    """(shape, pattern) that reads `metric` from what `code` prints, or None where it
    prints the summary block or METRIC lines (parse_metrics reads those as they are)
    or where nothing known prints it."""
    k = _rx(metric)
    if re.search(rf"METRIC {k}=", code) or (re.search(r"[\"']---", code)
                                             and re.search(rf"[\"']{k}:", code)):
        return None
    w = _rx(metric.replace("_", " ")) if "_" in metric else None
    for shape, source, pattern in SHAPES:
        if "{w}" in source and not w:
            continue
        if re.search(source.format(k=k, w=w), code):
            return (shape.format(name=metric, words=metric.replace("_", " ")),
                    pattern.format(k=k, w=w))
    # Trainers that print what the script never names: Hugging Face's Trainer logs
    # `{'eval_loss': ...}` after each evaluation, Keras `val_<metric>: ...` per epoch.
    if metric.startswith("eval_") and re.search(r"\b(Seq2Seq)?Trainer\(", code):
        return f"`'{metric}': X` (the Trainer's log)", DICT_SHAPE.format(k=k)
    if metric.startswith("val_") and framework in ("tensorflow", "keras") \
            and re.search(r"\.fit\(", code):
        return f"`{metric}: X` (Keras's progress lines)", COLON_SHAPE.format(k=k)
    return None


def printed(code: str, metric: str, framework: str | None = None) -> bool:
    """Whether `code` prints `metric` under its own name: the name whole (not inside
    `best_val_loss` or `accuracy_score`), or a trainer's log that prints it."""
    if re.search(rf"(?<![\w.]){re.escape(metric)}(?!\w)", code):
        return True
    words = metric.replace("_", " ")
    return ("_" in metric and re.search(rf"(?<![\w.]){re.escape(words)}(?!\w)", code) is not None) \
        or propose_pattern(code, metric, framework) is not None


def parse_metrics_file(path: str, pattern: str | None = None, name: str | None = None) -> dict:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_metrics(f.read(), pattern, name)
    except FileNotFoundError:
        raise UserError(f"{path} not found: give a run log or last_run.json")


def json_safe(metrics: dict) -> dict:
    """JSON has no NaN: non-finite numbers are stored as the strings 'nan'/'inf'."""
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in metrics.items()}
