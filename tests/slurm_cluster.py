"""A one-node Slurm cluster on this machine, for the tests and the benchmark.

munged, slurmctld and slurmd run as the current user (root in CI) with every file of
theirs in one temporary folder: configuration, state, spool, logs, pid files, munge's
key and socket. Their ports are free ones picked at start, so the cluster stays apart
from any other Slurm on the machine, and from a second copy of itself. The node offers
`slots` CPUs and a job asks for one by default: `slots` jobs run at once.

Clients reach it through SLURM_CONF (see `env`): a command run with that variable set
talks to this cluster, and to no other.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
INSTALL = "apt-get install -y slurm-wlm munge (bash dev.sh test does it as root)"
NODE = "n1"
PARTITION = "debug"
START_SECONDS = 30              # daemons that are not up by then will not come up

SLURM_CONF = """\
ClusterName=artest
SlurmctldHost={host}({addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge.socket
StateSaveLocation={dir}/ctld
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
# No cgroups here (a container, a CI runner): processes are followed through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
# Fast enough for tests: the scheduler looks often, a node that stops answering is
# declared down after SlurmdTimeout, finished jobs stay visible to squeue for MinJobAge.
SchedulerParameters=sched_interval=1
MessageTimeout=3
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
MinJobAge=600
SlurmdParameters=config_overrides
NodeName={node} NodeHostname={host} NodeAddr={addr} CPUs={slots} RealMemory=1000 State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if not shutil.which(p) and not os.path.exists(f"/usr/sbin/{p}")]


def program(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """start() brings the three daemons up (raises with their logs if they do not come
    up), stop() takes them down and deletes the folder."""

    def __init__(self, slots: int = 2):
        self.slots = slots
        self.dir = tempfile.mkdtemp(prefix="slurm-")
        self.conf = os.path.join(self.dir, "slurm.conf")
        self.env = {"SLURM_CONF": self.conf}
        self.procs: dict[str, subprocess.Popen] = {}

    # --------------------------------------------------------------- the daemons

    def start(self) -> "SlurmCluster":
        missing = missing_programs()
        if missing:
            raise RuntimeError(f"Slurm is not installed here (missing {', '.join(missing)}): {INSTALL}")
        import pwd
        d = self.dir
        os.chmod(d, 0o755)
        for sub in ("ctld", "spool", "munge"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "munge.key"), "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(os.path.join(d, "munge.key"), 0o400)
        host = socket.gethostname().split(".")[0]
        with open(self.conf, "w") as f:
            f.write(SLURM_CONF.format(host=host, addr="127.0.0.1", ctld_port=free_port(),
                                      slurmd_port=free_port(), dir=d, node=NODE, slots=self.slots,
                                      partition=PARTITION, user=pwd.getpwuid(os.getuid()).pw_name))
        self.procs["munged"] = self._daemon([
            program("munged"), "-F", "--force", f"--socket={d}/munge.socket",
            f"--key-file={d}/munge.key", f"--pid-file={d}/munge/munged.pid",
            f"--log-file={d}/munge/munged.log", f"--seed-file={d}/munge/munged.seed"], "munged")
        self._until(lambda: os.path.exists(f"{d}/munge.socket"), "munged")
        self.start_slurmctld(clear=True)
        self.start_slurmd()
        self._until(lambda: self.node_state() in ("IDLE", "MIXED", "ALLOCATED"), "the node")
        return self

    def start_slurmctld(self, clear: bool = False) -> None:
        """clear: a fresh controller (-c); otherwise it recovers its jobs from its state."""
        self.procs["slurmctld"] = self._daemon([program("slurmctld"), "-D", *(["-c"] if clear else []),
                                                "-i", "-f", self.conf], "slurmctld")

    def stop_slurmctld(self) -> None:
        """The controller stops as for maintenance (TERM: it saves its state first; one
        killed outright forgets what changed since its last save, its running jobs
        included)."""
        proc = self.procs.pop("slurmctld")
        proc.terminate()
        proc.wait(timeout=20)

    def start_slurmd(self) -> None:
        self.procs["slurmd"] = self._daemon([program("slurmd"), "-D", "-N", NODE, "-f", self.conf],
                                            "slurmd")

    def kill_slurmd(self) -> None:
        """slurmd dies at once (SIGKILL): the jobs' step daemons go on without it."""
        proc = self.procs.pop("slurmd")
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        if os.path.exists(self.conf):
            # Nothing of the tests' is left running on the node.
            subprocess.run([program("scancel"), "--full", "--partition", PARTITION],
                           env=self.client_env(), capture_output=True, timeout=20)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _daemon(self, argv: list[str], name: str) -> subprocess.Popen:
        out = open(os.path.join(self.dir, f"{name}.out"), "ab")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.client_env(), start_new_session=True)
        out.close()
        return proc

    def _until(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_SECONDS
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {n} ---\n{self.log(n)[-2000:]}" for n in self.procs)
                self.stop()
                raise RuntimeError(f"{what} did not come up ({', '.join(dead) or 'timeout'}):\n{logs}")
            time.sleep(0.2)

    def log(self, name: str) -> str:
        text = ""
        for path in (f"{self.dir}/{name}.out", f"{self.dir}/{name}.log"):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += f.read()
        return text

    # --------------------------------------------------------------- as a client

    def client_env(self) -> dict:
        return {**os.environ, **self.env}

    def run(self, *argv: str, check: bool = True) -> str:
        proc = subprocess.run([program(argv[0]), *argv[1:]], env=self.client_env(),
                              capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def node_state(self) -> str:
        out = self.run("sinfo", "-h", "-n", NODE, "-o", "%T", check=False).strip().upper()
        return out.rstrip("*~#!%$@^-").split("+")[0]

    def set_node(self, state: str, reason: str = "test") -> None:
        """state=down (its jobs are killed) or resume (a node already back says so: no
        error; ReturnToService=2 brings a downed node back when its slurmd registers)."""
        if state.lower() == "resume" and self.node_state() != "DOWN":
            return
        args = ["scontrol", "update", f"nodename={NODE}", f"state={state}"]
        self.run(*args, *([f"reason={reason}"] if state.lower() in ("down", "drain") else []))

    def jobs(self) -> list[str]:
        """Job ids still pending or running."""
        return self.run("squeue", "-h", "-o", "%i").split()
