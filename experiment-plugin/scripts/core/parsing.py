"""THE metric parser: a run's summary block, `METRIC name=value` lines or a
`last_run.json`, turned into numbers. Every script that reads a run's numbers calls
`parse_metrics`.
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


def parse_metrics(text: str) -> dict:
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
    """
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


def parse_metrics_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_metrics(f.read())
    except FileNotFoundError:
        raise UserError(f"{path} not found: give a run log or last_run.json")


def json_safe(metrics: dict) -> dict:
    """JSON has no NaN: non-finite numbers are stored as the strings 'nan'/'inf'."""
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in metrics.items()}
