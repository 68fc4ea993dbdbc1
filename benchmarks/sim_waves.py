"""Waves at scale, simulated: 16 workers against one, on replayed synthetic sessions.

THE MODEL
  * proposals: benchmarks/bench_decisions.py's `proposal()` (true effect in units of
    one run's noise sigma; 50% null, 30% harmful, 20% helpful with mean gain G);
    effects add up, so a change re-based onto a newer kept state keeps its effect;
  * one run observes its code's true value + N(0, 1);
  * run time: the budget times a factor drawn from a normal of the measured mean and
    spread (--run-mean, --run-sd: start-up and evaluation around the budget, and
    their jitter; measured values, see the defaults and the research log);
  * the agent is one conversation: every result it handles (read it, log it, think of
    and edit the next idea, submit) costs it --agent seconds, one after another;
    results that arrive while it is busy wait. A worker is refilled as soon as the
    agent has handled the result that freed it. `rerun` costs the agent nothing
    (wait-wave queues it again by itself);
  * decisions: core_policy.decide_candidate, the plugin's own rule for a finished candidate (the
    session's recommend() against the kept state as it is when the result is handled,
    `rebase` for a winner whose base moved, replacement of a kept state by a better
    sibling), on records shaped as log-experiment writes them, and log-experiment's undo
    of a keep the runs built on it do not bear out (core_policy.revert_due); the baseline's
    repeats run side by side.

PRINTED, per worker count (medians over the sessions):
  util      share of worker time spent running
  runs/h    runs finished per hour;  dec/h  decisions logged per hour
  gain      true gain of the kept state after --hours (sigma units)
  to 1w     wall time to reach the gain one worker reached in --hours, in hours
            (sessions that never reach it count as not reached)
  bad kept  null or harmful changes kept, share of those decided (bench_decisions'
            goal for the default rule: 5% at most); an undone keep counts as discarded

    python benchmarks/sim_waves.py                      # 16 vs 1 worker, G = 1, ~1 min
    python benchmarks/sim_waves.py --workers 1 4 16 --agent 0 30 60 --sessions 20
"""
import argparse
import hashlib
import heapq
import os
import random
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiment-plugin" / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))
from core import git, policy as core_policy  # noqa: E402
from bench_decisions import START, config_for, proposal  # noqa: E402

BUDGET = 300.0


class Session:
    """One simulated night: W workers, one agent, the real decision code."""

    def __init__(self, workers, g, seed, hours, agent, run_mean, run_sd, policy):
        self.rng = random.Random(seed)
        self.noise = random.Random(seed + 10_000)
        self.W, self.g, self.end, self.agent = workers, g, hours * 3600, agent
        self.run_mean, self.run_sd = run_mean, run_sd
        self.config = {**config_for(policy), "base_commit": self.sha("base")}
        self.runs, self.value = [], {self.config["base_commit"]: START}
        self.code = {self.config["base_commit"]: self.sha("code-base", 64)}
        self.names = 0
        self.front = []              # re-based candidates, run before new ideas
        self.kept_trace = [(0.0, START)]
        self.busy = 0.0
        self.finished = 0
        self.effect = {}             # commit: true effect of the change it made (sigma)
        self.bad = self.bad_kept = 0     # null or harmful changes decided / kept

    @staticmethod
    def sha(text, n=40):
        return hashlib.sha256(text.encode()).hexdigest()[:n]

    def kept(self):
        return git.last_kept_commit(self.config, self.runs)

    def run_time(self):
        return BUDGET * max(0.5, self.rng.gauss(self.run_mean, self.run_sd))

    def candidate(self, d, base, unchanged=False, rebased_from=None):
        """A candidate of effect d on `base`: its commit, code hash and true value."""
        self.names += 1
        name = f"c{self.names}"
        commit = base if unchanged else self.sha(name)
        if not unchanged:
            self.value[commit] = self.value[base] + d
            self.effect[commit] = d
            self.code[commit] = self.sha("code-" + name, 64)
        return {"name": name, "base": base, "commit": commit, "d": 0.0 if unchanged else d,
                "target_sha": self.code[commit], "samples": [], "seeds": [], "unchanged": unchanged,
                "run_status": "ok", "metrics": {}, "description": name, "rebased_from": rebased_from}

    def next_candidate(self):
        if self.front:
            return self.front.pop(0)
        return self.candidate(proposal(self.rng, self.g), self.kept())

    def record(self, cand, status, t):
        samples = cand["samples"]
        self.runs.append({"type": "run", "run": len(self.runs) + 1, "commit": cand["commit"][:7],
                          "commit_sha": cand["commit"], "status": status,
                          "metric": sum(samples) / len(samples), "samples": list(samples),
                          "seeds": list(range(len(samples))), "target_sha": cand["target_sha"],
                          "description": cand["name"], "timestamp": t, "base": cand["base"]})
        if status == "keep":
            self.kept_trace.append((t, self.value[cand["commit"]]))
        if status == "discard":
            # log-experiment's undo: a keep the runs built on it do not bear out
            held = core_policy.revert_due(self.config, self.runs)
            if held:
                self.runs.append(core_policy.revert_record(self.config, self.runs, held, len(self.runs) + 1))
                self.bad_kept -= self.effect[git.commit_of(held["record"])] >= 0
                self.kept_trace.append((t, self.value[self.kept()]))

    def handle(self, cand, t):
        """The agent handles one finished candidate at time t (log + git moves)."""
        decision, _ = core_policy.decide_candidate(self.config, self.runs, cand)
        kept = self.kept()
        if not cand["unchanged"]:
            self.bad += cand["d"] >= 0
            self.bad_kept += decision == "keep" and cand["d"] >= 0
        if decision == "keep":
            if cand["base"] != kept and cand["commit"] != kept:
                old = next(r for r in reversed(self.runs) if r["status"] == "keep")
                d_old = self.value[kept] - self.value[cand["base"]]
                self.record(cand, "keep", t)
                self.front.insert(0, self.candidate(d_old, cand["commit"], rebased_from=old["description"]))
            else:
                self.record(cand, "keep", t)
        else:
            self.record(cand, "discard", t)
            if decision == "rebase":
                self.front.insert(0, self.candidate(cand["d"], self.kept(), rebased_from=cand["name"]))

    def observe(self, cand):
        cand["samples"].append(self.value[cand["commit"]] + self.noise.gauss(0, 1))

    def play(self):
        # The baseline: its repeats side by side on the workers.
        k = self.config["baseline_runs"]
        base = self.candidate(0.0, self.config["base_commit"], unchanged=True)
        t = 0.0
        for i in range(0, k, self.W):
            batch = [self.run_time() for _ in range(min(self.W, k - i))]
            self.busy += sum(batch)
            t += max(batch)
            for _ in batch:
                self.observe(base)
        self.finished += k
        self.record(base, "keep", t)
        agent_free = t
        events = []                  # (finish time, order, worker, candidate)
        order = 0
        for w in range(self.W):      # the first wave: one idea per worker, one after another
            agent_free += self.agent
            cand = self.next_candidate()
            rt = self.run_time()
            heapq.heappush(events, (agent_free + rt, order, w, cand, rt))
            order += 1
        while events:
            finish, _, w, cand, rt = heapq.heappop(events)
            if finish > self.end:
                self.busy += rt - (finish - self.end)
                continue
            self.busy += rt
            self.finished += 1
            self.observe(cand)
            decision, _ = core_policy.decide_candidate(self.config, self.runs, cand)
            if decision == "rerun":          # queued again at once, no agent time
                rt = self.run_time()
                heapq.heappush(events, (finish + rt, order, w, cand, rt))
                order += 1
                continue
            agent_free = max(agent_free, finish) + self.agent
            if agent_free > self.end:
                continue
            self.handle(cand, agent_free)
            nxt = self.next_candidate()
            rt = self.run_time()
            heapq.heappush(events, (agent_free + rt, order, w, nxt, rt))
            order += 1
        return self

    def gain_at(self, t):
        value = START
        for when, v in self.kept_trace:
            if when <= t:
                value = v
        return START - value

    def time_to(self, gain):
        """When the kept state first reached `gain` (0 when one worker never gained)."""
        return next((when for when, v in self.kept_trace if START - v >= gain), None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 16])
    p.add_argument("--agent", type=float, nargs="+", default=[0.0, 30.0, 60.0],
                   help="agent seconds per handled result (default 0, 30 and 60)")
    p.add_argument("--g", type=float, default=1.0, help="mean gain of a helpful proposal, in sigma")
    p.add_argument("--sessions", type=int, default=12)
    p.add_argument("--hours", type=float, default=8.0)
    p.add_argument("--run-mean", type=float, default=1.035,
                   help="run time / budget, mean (default 1.035: 10.5 s of start-up and "
                        "evaluation around a 300 s budget, research log 2026-11-23)")
    p.add_argument("--run-sd", type=float, default=0.012,
                   help="run time / budget, spread (default 0.012: the 3.5 s spread of "
                        "bench_waves.py's pinned runs, research log 2026-11-24, over 300 s)")
    p.add_argument("--policy", default="noise-aware")
    a = p.parse_args(argv)
    print(f"{a.sessions} sessions of {a.hours:g} h, G={a.g:g}, budget {BUDGET:g} s, run time "
          f"{a.run_mean:.2f} x budget (sd {a.run_sd:.2f}), policy {a.policy}")
    print(f"{'workers':>7} {'agent s':>7} {'util':>6} {'runs/h':>7} {'dec/h':>6} {'gain':>6} "
          f"{'to 1w':>6}  {'reached':>7} {'bad kept':>8}")
    for agent in a.agent:
        one = [Session(1, a.g, s, a.hours, agent, a.run_mean, a.run_sd, a.policy).play()
               for s in range(a.sessions)]
        for w in a.workers:
            sessions = one if w == 1 else [Session(w, a.g, s, a.hours, agent, a.run_mean, a.run_sd,
                                                   a.policy).play() for s in range(a.sessions)]
            util = statistics.median(s.busy / (w * a.hours * 3600) for s in sessions)
            runs_h = statistics.median(s.finished / a.hours for s in sessions)
            dec_h = statistics.median(len(s.runs) / a.hours for s in sessions)
            gain = statistics.median(s.gain_at(a.hours * 3600) for s in sessions)
            times = [s.time_to(o.gain_at(a.hours * 3600)) for s, o in zip(sessions, one)]
            reached = [t / 3600 for t in times if t is not None]
            to = f"{statistics.median(reached):6.2f}" if reached and w > 1 else f"{'-':>6}"
            bad = sum(s.bad_kept for s in sessions) / max(1, sum(s.bad for s in sessions))
            print(f"{w:>7} {agent:>7g} {util:>6.0%} {runs_h:>7.1f} {dec_h:>6.1f} {gain:>6.2f} {to}  "
                  f"{len(reached):>3}/{len(sessions)} {bad:>8.1%}", flush=True)


if __name__ == "__main__":
    main()
