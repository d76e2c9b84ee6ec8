"""A single-node SLURM cluster on localhost from Debian's packages: munged, slurmctld and slurmd in the foreground
under one temporary folder, no accounting database (job states come from squeue, kept for an hour).

The node declares as many (count-only) GPUs as CPUs, so jobs that ask for ``--gpus`` are scheduled as on a GPU node
and run on the CPU (the code uses a GPU only when torch sees one). Memory is not a consumable resource and the node
claims 1 TiB, so a profile's cluster-sized memory requests are accepted on a small machine. While it runs,
/etc/slurm/slurm.conf is a link to its configuration (see SYSTEM_CONF); a machine with its own SLURM configuration
gets no test cluster.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from system_packages import missing_reason

PROGRAMS = {
    "munged": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "squeue": "slurm-client",
}
NODE = "node1"
# Where srun looks for the configuration: Snakemake's job step drops every SLURM_* variable (SLURM_CONF included)
# before it calls srun inside a job, so the node's default path has to name this cluster while it runs.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(root: Path, cpus: int, port: int) -> str:
    host = socket.gethostname().split(".")[0]
    return f"""\
ClusterName=brainatt-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
SlurmctldPort={port}
SlurmdPort={_free_port()}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1048576 Gres=gpu:{cpus} State=UNKNOWN
PartitionName=main Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    daemons: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=True, timeout=60).stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows (finished ones included): id, state, the TRES per job (``gres:gpu:1`` for
        a job that asked for a GPU), the memory asked for and the comment (Snakemake's rule and wildcards)."""
        fields = "JobID:|,State:|,tres-per-job:|,MinMemory:|,Comment:1000"
        out = self.run("squeue", "--states=all", "--noheader", "--sort=i", "-O", fields)
        keys = ("id", "state", "tres", "memory", "comment")
        rows = [[cell.strip() for cell in line.split("|")] for line in out.splitlines() if line.strip()]
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            for log in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        if self.daemons:
            subprocess.run(["scancel", "--quiet", "--partition=main"], env=self.env, timeout=30)
        for daemon in reversed(self.daemons):  # slurmd, slurmctld, then munged
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
        self.daemons.clear()
        if SYSTEM_CONF.is_symlink() and SYSTEM_CONF.resolve() == (self.root / "slurm.conf").resolve():
            SYSTEM_CONF.unlink()


def unavailable() -> str | None:
    """Why no cluster can start here (packages that cannot be installed, no root for slurmd), else None."""
    reason = missing_reason(PROGRAMS)
    if reason is None and os.geteuid() != 0:
        reason = "slurmd runs jobs as their user only when started as root"
    if reason is None and (SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink()):
        reason = f"{SYSTEM_CONF} exists: this machine has a SLURM configuration of its own (or a test cluster runs)"
    return reason


def start(root: Path, timeout: float = 90.0) -> Cluster:
    """Starts munged, slurmctld and slurmd under ``root`` and waits until the node is idle. Call ``stop()``; check
    ``unavailable()`` first."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)  # munged wants its socket's folders searchable by everyone
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    cpus = os.cpu_count() or 1
    conf = root / "slurm.conf"
    port = _free_port()
    conf.write_text(_slurm_conf(root, cpus, port))
    for i in range(cpus):  # stand-ins for /dev/nvidia*: slurmd counts a GPU per file
        (root / f"gpu{i}").touch()
    (root / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={root}/gpu[0-{cpus - 1}]\n")
    env = dict(os.environ, SLURM_CONF=str(conf))
    cluster = Cluster(root, env)
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.symlink_to(conf)

    def daemon(name: str, *args: str) -> None:
        out = open(root / f"{name}.out", "w")  # the daemon writes to it until stopped
        cluster.daemons.append(subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT))

    try:
        daemon(
            "munged",
            "munged",
            "--foreground",
            "--force",  # as root
            f"--socket={root}/munge.socket",
            f"--key-file={key}",
            f"--pid-file={root}/munged.pid",
            f"--log-file={root}/munged.log",
            f"--seed-file={root}/munged.seed",
        )
        deadline = time.monotonic() + timeout
        while not (root / "munge.socket").exists():
            if time.monotonic() > deadline or cluster.daemons[0].poll() is not None:
                raise RuntimeError(f"munged did not start:\n{(root / 'munged.out').read_text()}")
            time.sleep(0.2)
        daemon("slurmctld", "slurmctld", "-D", "-f", str(conf))
        daemon("slurmd", "slurmd", "-D", "-f", str(conf), "-N", NODE)
        state = ""
        while time.monotonic() < deadline:
            if any(d.poll() is not None for d in cluster.daemons):
                break
            probe = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True)
            state = probe.stdout.strip()
            if state == "idle":
                return cluster
            time.sleep(1)
        raise RuntimeError(f"the SLURM node did not become idle (state {state!r}):\n{cluster.log_tails()}")
    except BaseException:
        cluster.stop()
        raise
