"""bench.py profiles both templates without a full run, and falls back to a
short real run when a template no longer has the names it reads."""

import json
import os
import subprocess
import sys

import pytest

from test_train import REPO, patched_copy

BENCH = os.path.join(REPO, "bench.py")


def bench(args, env, cwd, timeout=300):
    return subprocess.run([sys.executable, BENCH, *args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("target", ["train.py", "train_mlx.py"])
def test_bench_profiles_a_template(target, tmp_path, classics_cache):
    if target == "train_mlx.py":
        pytest.importorskip("mlx.core")
    result = bench(["--target", target, "--steps", "1", "--warmup", "1", "--json"], classics_cache, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    *text, last = result.stdout.strip().splitlines()
    report = json.loads(last)
    assert report["loss_falls"] is True
    assert report["tok_per_sec"] > 0 and report["projected_eval_s"] > 0 and report["peak_memory_mb"] > 0
    assert report["mfu_percent"] is None  # a CPU has no known peak
    assert set(report["split_ms"]) >= {"data", "optimizer"}
    for word in ("tok/s", "optimizer", "eval (proj.)", "peak memory", "falls"):
        assert word in "\n".join(text)
    assert not (tmp_path / "data").exists(), "bench must not write run records"


def test_bench_falls_back_when_names_are_gone(tmp_path, classics_cache):
    script = patched_copy(tmp_path, "train.py", [(r"^def build_optimizers\(model\):", "def make_optimizers(model):"),
                                                 (r"optimizers = build_optimizers\(model\)",
                                                  "optimizers = make_optimizers(model)")])
    # The fallback is a whole training run; what is checked is that it happens and
    # reports, so its evaluation is a small one.
    env = {**classics_cache, "PYTHONPATH": REPO, "AUTORESEARCH_EVAL_TOKENS": "4096"}
    result = bench(["--target", script, "--fallback-budget", "2"], env, tmp_path)
    assert "falling back" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert "val_bpb" in result.stdout and result.returncode == 0


def test_heldout_corpus_turns_bible_verses_into_a_paragraph_per_chapter():
    """`bible -f` prints "Ge1:1 text" lines: the references go, and a chapter's verses
    join into one paragraph (a numbered book like 1Sa keeps its chapters apart)."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import heldout_corpus

    lines = ["bible: Debian/BRS Release 4.36", "Ge1:1 In the beginning.", "Ge1:2 And the earth.",
             "Ge2:1 Thus the heavens.", "1Sa1:1 Now there was a man.", "2Sa1:1 Now it came to pass."]
    text = heldout_corpus.bible_paragraphs(lines)
    assert text.split("\n\n") == ["In the beginning. And the earth.", "Thus the heavens.",
                                  "Now there was a man.", "Now it came to pass.\n"]
