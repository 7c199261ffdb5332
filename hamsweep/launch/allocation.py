"""Inside a SLURM allocation (``mode: ray``): the job's nodes become one Ray cluster for one sweep.

Rank 0 starts the Ray head and runs the same driver as a local sweep; the other ranks join the head
and wait for rank 0's stop marker. Every Ray daemon is a child of its task (``ray start --block``
under a subprocess, never the daemonizing form), so SLURM's process tracking ends them with the job.
Each job (and each requeue of it) has its own ports, Ray temp folder and marker files; Ray's token
auth uses the sweep's token file (mode 0600), so no other cluster user can reach the head.

A requeued job (time limit, preemption, ``scontrol requeue``) runs ``SweepJob`` again from the
start: the driver then continues the sweep from its folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import submitit

from hamsweep.rundir import atomic_write_text

__all__ = ["RayNodes", "SweepJob", "node_resources"]

_READY = "Ray runtime started"  # what `ray start` prints once its daemons are up
_START_S = 180  # a Ray node's start on a busy node (shared file systems are slow to import from)
_JOIN_S = 900  # how long the other ranks wait for rank 0's head (rank 0 may still be loading data)
_STOP_S = 30  # `ray start --block` stops its daemons on SIGTERM: give it this long, then SIGKILL
_OBJECT_STORE = 1024**3  # bytes: trials pass metrics and checkpoint paths, not tensors


class SweepJob(submitit.helpers.Checkpointable):
    """The callable submitit runs on every rank of the allocation. Checkpointable: on a time limit
    or preemption (USR2) submitit requeues it, and the rerun resumes the sweep from its folder."""

    def __init__(self, out: str) -> None:
        self.out = out

    def __call__(self) -> str:
        from hamsweep.sweep.driver import drive

        env = submitit.JobEnvironment()
        tag = f"{env.job_id}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
        single = env.num_nodes == 1
        nodes = RayNodes(Path(self.out), tag, single=single)
        # before _node_ip imports ray: Ray reads RAY_AUTH_MODE once, at import, for the driver's
        # ray.init
        nodes.env()
        ip = "127.0.0.1" if single else _node_ip()  # one node: nothing else needs to reach it
        if env.global_rank == 0:
            with nodes.head(ip) as address:
                drive(Path(self.out), address=address)
        else:
            nodes.worker(ip)
        return self.out


def node_resources() -> tuple[int, int]:
    """(CPUs, GPUs) SLURM gave this task: SLURM_CPUS_PER_TASK and the gres GPUs
    in CUDA_VISIBLE_DEVICES."""
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return cpus, len([d for d in visible.split(",") if d.strip()])


class RayNodes:
    """The Ray cluster of one job run (``tag`` = job id + restart count), its
    files in the sweep folder."""

    def __init__(self, out: Path, tag: str, *, single: bool) -> None:
        self.out, self.tag, self.single = out, tag, single
        self.folder = out / "slurm" / f"ray-{tag}"
        self.temp = Path("/tmp") / f"hamsweep-ray-{tag}"  # short: Ray's unix sockets live in it
        self.head_file, self.stop_file = self.folder / "head.json", self.folder / "stop"

    def env(self) -> dict[str, str]:
        """Ray's settings for this sweep; also set in this process, for the driver's ``ray.init``:
        call it before this process imports ray, which reads RAY_AUTH_MODE once (else the
        head refuses the driver)."""
        env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.out / "ray_token"),
            "RAY_USAGE_STATS_ENABLED": "0",
            # our nodes stop once the sweep is over, so there is nothing to drain; Ray's default
            # drain on SIGTERM (up to 30 s) hangs on a head that is already
            # gone and outlasts _STOP_S
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        }
        if self.single:
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # one node: Ray binds 127.0.0.1
        os.environ.update(env)
        return dict(os.environ)

    @contextmanager
    def head(self, ip: str) -> Iterator[str]:
        """Start the head on ``ip``, yield its address; at exit tell the other ranks
        to stop, then stop it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        port, agent = _free_ports(ip, 2)
        proc = self._start(
            ["--head", f"--port={port}", "--include-dashboard=false"], ip, agent, "head"
        )
        try:
            address = f"{ip}:{port}"
            atomic_write_text(
                self.head_file,
                json.dumps({"address": address, "pid": proc.pid, "host": socket.gethostname()}),
            )
            yield address
        finally:
            atomic_write_text(self.stop_file, "")
            _stop(proc)
            shutil.rmtree(self.temp, ignore_errors=True)

    def worker(self, ip: str) -> None:
        """Join the head once it is up; leave when rank 0 writes the stop
        marker (or the head dies)."""
        address = self._wait_for_head()
        if address is None:
            return  # rank 0 ended before its head came up: nothing to join
        (agent,) = _free_ports(ip, 1)
        proc = self._start([f"--address={address}"], ip, agent, f"worker-{socket.gethostname()}")
        try:
            while not self.stop_file.exists() and proc.poll() is None:
                time.sleep(1)
        finally:
            _stop(proc)
            shutil.rmtree(self.temp, ignore_errors=True)

    def _start(
        self, role: list[str], ip: str, agent_port: int, name: str
    ) -> subprocess.Popen[bytes]:
        cpus, gpus = node_resources()
        ray = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray,
            "start",
            *role,
            f"--node-ip-address={ip}",
            f"--dashboard-agent-listen-port={agent_port}",
            "--disable-usage-stats",
            f"--num-cpus={cpus}",
            f"--num-gpus={gpus}",
            f"--object-store-memory={_OBJECT_STORE}",
            f"--temp-dir={self.temp}",
            "--block",
        ]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()
        log = self.folder / f"{name}.log"
        with log.open("wb") as f:
            # its own process group: the raylet's agents outlive it (orphaned, up to a minute
            # reporting its exit to a GCS that is gone), and _stop ends them through the group
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env(), process_group=0
            )
        _wait_ready(proc, log)
        return proc

    def _remove_stale_temps(self) -> None:
        """Earlier runs of this job (before a requeue) that SLURM killed left their Ray temp folders
        here; they are dead by now, since a requeued job's processes end before it runs again."""
        job, _, _ = self.tag.rpartition("-")
        if not job:
            return
        for stale in self.temp.parent.glob(f"hamsweep-ray-{job}-*"):
            if stale != self.temp and stale.name.rpartition("-")[2].isdigit():
                shutil.rmtree(stale, ignore_errors=True)

    def _wait_for_head(self) -> str | None:
        deadline = time.monotonic() + _JOIN_S
        while time.monotonic() < deadline:
            if self.head_file.exists():
                return json.loads(self.head_file.read_text())["address"]
            if self.stop_file.exists():
                return None
            time.sleep(1)
        raise RuntimeError(
            f"rank 0's Ray head did not come up within {_JOIN_S} s (no {self.head_file})"
        )


def _wait_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_S
    while _READY not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode}; its output: {log}")
        if time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"`ray start` was not ready within {_START_S} s; its output: {log}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop `ray start` (it stops its daemons), then kill what is left in its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # nothing was left
        os.killpg(proc.pid, signal.SIGKILL)


def _free_ports(ip: str, n: int) -> list[int]:
    """``n`` ports free on ``ip`` right now (the OS picks them; two jobs on
    one node never share)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((ip, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_ip() -> str:
    """This node's address as Ray itself would pick it (the interface of the default route)."""
    from ray.util import get_node_ip_address

    return get_node_ip_address()
