"""RayNodes (launch/allocation.py) as two nodes of a SLURM allocation, for real: two network
namespaces joined by a veth pair stand in for two hosts, since Ray cannot form a multi-node cluster
over loopback. Rank 0's code runs in namespace A, another rank's in namespace B; nothing in Ray is
patched. A Ray node starts in 5-10 s on 2 cores (more when the machine is busy), so each test takes
15-35 s.

Every connection to the namespace addresses is made from inside a namespace: in the main network
those addresses would follow the default route off this machine. The namespaces have no default
route, so nothing in them can leave them either.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

SUBNET = "10.213.0"  # a private /24 that exists only inside the two namespaces
RESULT = "RESULT "  # prefix of the line on which a namespace program prints its findings (JSON)
RUN_S = (
    240.0  # one namespace program: up to two Ray node starts on a busy 2-core machine, with room
)
WORKER_EXIT_S = (
    30.0  # a worker polls the stop marker every second, then stops `ray start` (SIGTERM)
)
GONE_S = 5.0  # Ray's daemons may take a moment to exit after their `ray start --block`


@dataclass(frozen=True)
class Program:
    """A Python program running in a namespace, its output in a file."""

    proc: subprocess.Popen[bytes]
    what: str  # what it stands for, for messages
    log: Path  # its stdout and stderr

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)  # its own session: `ip netns exec` and the python under it
            self.proc.wait()


@dataclass(frozen=True)
class NetnsPair:
    """Two network namespaces joined by a veth pair: A (rank 0's host) and B (another rank's)."""

    a: str  # namespace name; the veth end inside it has the same name
    b: str
    ip_a: str  # A's address on the veth pair
    ip_b: str
    logs: Path  # where the programs' output goes

    def start(
        self, ns: str, what: str, code: str, *args: str, env: dict[str, str] | None = None
    ) -> Program:
        """``python -c code args`` inside namespace ``ns`` with a SLURM task's environment
        (plus ``env``)."""
        log = self.logs / f"{what.split()[0]}-{secrets.token_hex(2)}.log"
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-c", code, *args]
        with log.open("wb") as f:
            proc = subprocess.Popen(
                cmd,
                env={**_task_env(), **(env or {})},
                cwd=REPO,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return Program(proc, what, log)

    def pids(self) -> set[int]:
        """Every process still in either namespace (all ours: nothing else runs in them)."""
        found: set[int] = set()
        for ns in (self.a, self.b):
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            found |= {int(p) for p in out.split()}
        return found


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(
            f"`ip {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}; "
            "these tests need root and iproute2 to build two network namespaces "
            "(the test machine and CI run as root)",
            pytrace=False,
        )


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[NetnsPair]:
    """A fresh namespace pair named after this process, so that concurrent runs never share one,
    with `lo` up in each (a node's own daemons talk over 127.0.0.1).
    Deleted afterwards, whatever happened."""
    stem = f"hs{os.getpid()}{secrets.token_hex(2)}"  # interface names have at most 15 characters
    pair = NetnsPair(f"{stem}a", f"{stem}b", f"{SUBNET}.1", f"{SUBNET}.2", tmp_path)
    made: list[str] = []
    try:
        for ns in (pair.a, pair.b):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # both ends are created inside their namespaces: the main network never sees the link
        _ip(
            "link",
            "add",
            pair.a,
            "netns",
            pair.a,
            "type",
            "veth",
            "peer",
            "name",
            pair.b,
            "netns",
            pair.b,
        )
        for ns, ip in ((pair.a, pair.ip_a), (pair.b, pair.ip_b)):
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", ns)
            _ip("-n", ns, "link", "set", ns, "up")
        yield pair
    finally:
        for pid in pair.pids() if made else ():
            _kill(pid)  # what a failed test left running in our namespaces
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


def _task_env() -> dict[str, str]:
    """What SLURM gives each task here: 1 CPU, no GPU (node_resources reads these);
    no Ray settings of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "SLURM_CPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """A sweep folder as prepare_sweep leaves it, as far as Ray goes: the token file, mode 0600."""
    out = tmp_path / "sweep"
    out.mkdir()
    _token(out / "ray_token")
    return out


def _token(path: Path) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def _tag() -> str:
    # short: Ray's unix sockets live under /tmp/hamsweep-ray-<tag>
    return f"t{os.getpid()}{secrets.token_hex(2)}"


def _finish(prog: Program, *, beside: Program | None = None, stop: Path | None = None) -> dict:
    """The RESULT of ``prog``, which must exit 0 within RUN_S; fails at once if ``beside``
    (another rank) exits before the ``stop`` marker exists, rather than waiting for ``prog`` to
    give up on it."""
    deadline = time.monotonic() + RUN_S
    while prog.proc.poll() is None:
        if (
            beside is not None
            and stop is not None
            and beside.proc.poll() is not None
            and not stop.exists()
        ):
            pytest.fail(
                f"{beside.what} exited ({beside.proc.returncode}) while {prog.what} ran:\n"
                f"{beside.tail()}",
                pytrace=False,
            )
        if time.monotonic() > deadline:
            pytest.fail(
                f"{prog.what} did not finish within {RUN_S:.0f} s:\n{prog.tail()}", pytrace=False
            )
        time.sleep(0.2)
    assert prog.proc.returncode == 0, (
        f"{prog.what} exited with {prog.proc.returncode}:\n{prog.tail()}"
    )
    lines = [
        line
        for line in prog.log.read_text(errors="replace").splitlines()
        if line.startswith(RESULT)
    ]
    assert lines, f"{prog.what} printed no {RESULT!r}line:\n{prog.tail()}"
    return json.loads(lines[-1][len(RESULT) :])


def _leftovers(temp: Path, netns: NetnsPair) -> dict[int, str]:
    """Processes of the cluster still alive GONE_S after the ranks exited: those in our namespaces,
    and any whose command line names the Ray temp folder (raylet, gcs_server, workers, agents)."""
    deadline = time.monotonic() + GONE_S
    while (pids := _naming(temp) | netns.pids()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return {pid: _cmdline(pid) for pid in pids}


def _naming(temp: Path) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and str(temp) in _cmdline(int(entry.name)):
            found.add(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""  # gone meanwhile


# rank != 0: what SweepJob does on the other ranks
WORKER = """
import sys
from pathlib import Path
from hamsweep.launch.allocation import RayNodes
RayNodes(Path(sys.argv[1]), sys.argv[2], single=False).worker(sys.argv[3])
"""

# rank 0: the head's context around a driver that waits for both nodes and pins one task to each
HEAD_AND_DRIVER = """
import json, sys, time
from pathlib import Path
from hamsweep.launch.allocation import RayNodes

t0 = time.monotonic()
with RayNodes(Path(sys.argv[1]), sys.argv[2], single=False).head(sys.argv[3]) as address:
    head_s = time.monotonic() - t0
    # imported only now, as the driver does: Ray reads RAY_AUTH_MODE (set by head()) once, at import
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1)
    def where():
        return ray.util.get_node_ip_address()

    ray.init(address=address, log_to_driver=False)
    deadline = time.monotonic() + 120
    while len(alive := [n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    both_s = time.monotonic() - t0
    pinned = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], \
soft=False)).remote()
              for n in alive]
    ran = ray.get(pinned, timeout=120)
    nodes = {n["NodeManagerAddress"]: n["Resources"] for n in alive}
    ray.shutdown()
print("RESULT " + json.dumps({"address": address, "nodes": nodes, "ran": ran, "head_s": head_s, \
"both_s": both_s,
                              "total_s": time.monotonic() - t0}))
"""


def test_two_namespaces_form_one_cluster_and_the_stop_marker_ends_the_worker(netns, sweep_dir):
    tag = _tag()
    temp = Path("/tmp") / f"hamsweep-ray-{tag}"
    folder = sweep_dir / "slurm" / f"ray-{tag}"
    t0 = time.monotonic()
    worker = netns.start(netns.b, "worker (rank 1)", WORKER, str(sweep_dir), tag, netns.ip_b)
    head = netns.start(
        netns.a, "head (rank 0, with the driver)", HEAD_AND_DRIVER, str(sweep_dir), tag, netns.ip_a
    )
    try:
        found = _finish(head, beside=worker, stop=folder / "stop")
        try:
            worker.proc.wait(
                max(0.0, (folder / "stop").stat().st_mtime + WORKER_EXIT_S - time.time())
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the worker still ran {WORKER_EXIT_S:.0f} s after rank 0 wrote its stop marker:\n"
                f"{worker.tail()}",
                pytrace=False,
            )
        # an upper bound: measured once it is gone
        worker_s = time.time() - (folder / "stop").stat().st_mtime
    finally:
        head.kill()
        worker.kill()

    assert worker.proc.returncode == 0, (
        f"the worker exited with {worker.proc.returncode}:\n{worker.tail()}"
    )
    assert set(found["nodes"]) == {netns.ip_a, netns.ip_b}, found
    assert sorted(found["ran"]) == sorted([netns.ip_a, netns.ip_b]), (
        f"one task was pinned to each node: {found}"
    )
    # node_resources
    assert all(res.get("CPU") == 1 and "GPU" not in res for res in found["nodes"].values()), found
    assert json.loads((folder / "head.json").read_text())["address"] == found["address"]
    assert found["address"].startswith(f"{netns.ip_a}:") and (folder / "stop").exists()
    assert not (left := _leftovers(temp, netns)), f"Ray processes outlived their node: {left}"
    assert not temp.exists(), f"{temp} was not removed"
    print(
        f"\nhead up {found['head_s']:.1f} s, both nodes {found['both_s']:.1f} s, "
        f"rank 0 done {found['total_s']:.1f} s, "
        f"worker gone {worker_s:.1f} s after the stop marker; test {time.monotonic() - t0:.1f} s"
    )


# rank 0's head, and two clients in its namespace: one with another token file,
# then one with the sweep's
HEAD_AND_CLIENTS = """
import json, os, subprocess, sys
from pathlib import Path
from hamsweep.launch.allocation import RayNodes

CLIENT = "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); \
print('nodes', len(ray.nodes()))"

def client(address, token, **extra):
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": token, **extra}  \
# RAY_AUTH_MODE=token: head() set it here
    proc = subprocess.run([sys.executable, "-c", CLIENT, address], env=env, capture_output=True, \
text=True, timeout=90)
    return {"rc": proc.returncode, "out": (proc.stdout + proc.stderr)[-3000:]}

out = Path(sys.argv[1])
with RayNodes(out, sys.argv[2], single=False).head(sys.argv[3]) as address:
    # 3 tries to reach the GCS, not 20 (1 s apart): the head answers each one, and refuses it
    found = {"wrong": client(address, sys.argv[4], RAY_gcs_server_port_wait_time_s="3"),
             "right": client(address, str(out / "ray_token"))}
print("RESULT " + json.dumps(found))
"""


def test_the_head_refuses_a_client_with_another_token(netns, sweep_dir, tmp_path):
    wrong = _token(tmp_path / "other_token")
    head = netns.start(
        netns.a,
        "head (rank 0, with two clients)",
        HEAD_AND_CLIENTS,
        str(sweep_dir),
        _tag(),
        netns.ip_a,
        str(wrong),
    )
    try:
        found = _finish(head)
    finally:
        head.kill()

    refused, joined = found["wrong"], found["right"]
    assert refused["rc"] != 0, f"a client with another token joined:\n{refused['out']}"
    assert "InvalidAuthToken" in refused["out"], refused["out"]
    assert joined["rc"] == 0 and "nodes 1" in joined["out"], (
        f"the sweep's own token was refused:\n{joined['out']}"
    )


# SweepJob as rank 0 of a two-node job, as submitit runs it; `drive` (the sweep) is replaced by a
# driver that only connects to the head
SWEEP_JOB_RANK0 = """
import json, sys
import hamsweep.sweep.driver
from hamsweep.launch.allocation import SweepJob

def connect(out, address):
    import ray
    ray.init(address=address, log_to_driver=False)
    print("RESULT " + json.dumps({"address": address, "nodes": len(ray.nodes())}))
    ray.shutdown()

hamsweep.sweep.driver.drive = connect
SweepJob(sys.argv[1])()
"""


def test_rank_0_of_a_multi_node_job_drives_through_its_head(netns, sweep_dir):
    """SweepJob looks up the node's address through Ray before it starts the head: the token
    settings must be in place before that import, or the head refuses the driver. (In a namespace
    without a default route that address is 127.0.0.1; a single rank needs no other.)"""
    job = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": str(10_000 + os.getpid() % 10_000),
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "0",
        "SLURM_NODEID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_RESTART_COUNT": str(int(secrets.token_hex(2), 16)),
    }
    rank0 = netns.start(netns.a, "SweepJob (rank 0 of 2)", SWEEP_JOB_RANK0, str(sweep_dir), env=job)
    try:
        found = _finish(rank0)
    finally:
        rank0.kill()
    assert found["nodes"] == 1, found
    tag = f"{job['SLURM_JOB_ID']}-{job['SLURM_RESTART_COUNT']}"
    assert (sweep_dir / "slurm" / f"ray-{tag}" / "stop").exists()
    assert not Path(f"/tmp/hamsweep-ray-{tag}").exists()
