"""Hosts on one machine: a Dask scheduler and workers, each in a network namespace of its own.

`Hosts` makes a bridge on a private /24 (10.231.N.0/24, N free on this machine) in the root
namespace, which keeps 10.231.N.1: the address the services every host reaches bind to (the
object store, the OpenAI stand-in, the Prefect API). The scheduler and each worker get a
namespace, one veth into the bridge, an address of their own and a loopback of their own, and
a home, temporary and working directory of their own: they share no local directory with the
flow or with each other (a relative `cache.path` resolves under each one's own directory).
Everything made is taken down again on exit, whatever happened.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]  # workers import this checkout's code, not an installed copy
SCHEDULER_PORT = 8786


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be made here, in one line; None when they can."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "making network namespaces needs iproute2's `ip`"
    tag = os.getpid() % 100000
    made: list[list[str]] = []  # what to delete again
    try:
        for make, undo in (
            (["netns", "add", f"ephosts-probe-{tag}"], ["netns", "del", f"ephosts-probe-{tag}"]),
            (["link", "add", f"ephpb{tag}", "type", "bridge"], ["link", "del", f"ephpb{tag}"]),
            (
                ["link", "add", f"ephpv{tag}", "type", "veth", "peer", "name", f"ephpp{tag}"],
                ["link", "del", f"ephpv{tag}"],
            ),
        ):
            done = subprocess.run(["ip", *make], capture_output=True, text=True)
            if done.returncode != 0:
                why = (done.stderr.strip().splitlines() or ["?"])[0]
                return f"cannot make a network namespace, bridge or veth: {why}"
            made.append(undo)
    finally:
        for undo in reversed(made):
            subprocess.run(["ip", *undo], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _free_subnet() -> int:
    """An N with no address of 10.231.N.0/24 on this machine; from the pid, so that two test
    sessions at once pick different ones."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for step in range(254):
        n = (os.getpid() + step) % 254 + 1
        if f" 10.231.{n}." not in used:
            return n
    raise RuntimeError("no free 10.231.N.0/24 on this machine")


class Hosts:
    """`with Hosts(root, env) as hosts:` a scheduler at `hosts.scheduler_address`; `add_worker`
    starts a worker host, `kill_worker` pulls its plug (SIGKILL). `env` is what every process
    started here gets besides its own HOME, TMPDIR and PREFECT_HOME."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.n = _free_subnet()
        self.bridge = f"ephb{self.n}"
        self.host_address = f"10.231.{self.n}.1"
        self.namespaces: list[str] = []
        self.veths: list[str] = []
        self.processes: dict[str, subprocess.Popen] = {}
        self.addresses: dict[str, str] = {}  # host name -> its address

    @property
    def scheduler_address(self) -> str:
        return f"tcp://{self.addresses['scheduler']}:{SCHEDULER_PORT}"

    def __enter__(self) -> Hosts:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes.values():  # throwaway hosts: nothing of theirs needs a clean exit
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for namespace in self.namespaces:  # its veth end goes with it, and so the pair
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        for link in [*self.veths, self.bridge]:  # gone already where their namespace went
            subprocess.run(["ip", "link", "del", link], capture_output=True)

    def host(self, name: str) -> tuple[str, Path]:
        """A namespace `name` on the bridge, with an address and a directory of its own."""
        index = len(self.namespaces) + 2
        namespace, veth = f"ephosts{self.n}-{name}", f"ephv{self.n}x{index}"
        _ip("netns", "add", namespace)
        self.namespaces.append(namespace)
        _ip("link", "add", veth, "type", "veth", "peer", "name", f"ephp{self.n}x{index}")
        self.veths.append(veth)
        _ip("link", "set", f"ephp{self.n}x{index}", "netns", namespace)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        address = f"10.231.{self.n}.{index}"
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", f"ephp{self.n}x{index}")
        _ip("-n", namespace, "link", "set", f"ephp{self.n}x{index}", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        self.addresses[name] = address
        home = self.root / name
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        return namespace, home

    def start(self, name: str, *command: str) -> subprocess.Popen:
        """Run `command` (python's arguments) on host `name`, in its own directory; output to its log."""
        namespace, home = self.host(name)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **self.env,
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "PREFECT_HOME": str(home / ".prefect"),
            "PYTHONPATH": str(REPO),
        }
        log = open(home / "log.txt", "w")  # noqa: SIM115  the child holds it
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, *command],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill takes all it started
        )
        log.close()
        self.processes[name] = process
        return process

    def start_scheduler(self) -> None:
        self.start(
            "scheduler", "-m", "distributed.cli.dask_scheduler", "--host", f"10.231.{self.n}.2",
            "--port", str(SCHEDULER_PORT), "--no-dashboard",
        )  # fmt: skip

    def add_worker(self, name: str) -> None:
        """A worker host: one single-threaded worker process, no nanny (a killed host stays dead)."""
        address = f"10.231.{self.n}.{len(self.namespaces) + 2}"
        self.start(
            name, "-m", "distributed.cli.dask_worker", self.scheduler_address, "--nthreads", "1", "--no-nanny",
            "--no-dashboard", "--host", address, "--local-directory", "dask",
        )  # fmt: skip

    def wait_for_workers(self, count: int, timeout: float = 60) -> None:
        """Until the scheduler knows `count` workers (from the root namespace, as the flow sees it)."""
        from distributed import Client

        with Client(self.scheduler_address, timeout=timeout) as client:
            client.wait_for_workers(count, timeout=timeout)

    def kill_worker(self, name: str) -> None:
        """The host goes away at once: its processes get SIGKILL, nothing is cleaned up."""
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait()

    def log(self, name: str) -> str:
        return (self.root / name / "log.txt").read_text(errors="replace")


def start_prefect_server(home: Path, host: str, port: int) -> subprocess.Popen:
    """A Prefect API server bound to `host` (the temporary one binds 127.0.0.1, which no other
    namespace reaches), with its own PREFECT_HOME; `wait_for_api` says when it answers."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "0"}
    env.pop("PREFECT_API_URL", None)
    home.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
               "--host", host, "--port", str(port), "--log-level", "error", "--lifespan", "on"]  # fmt: skip
    log = open(home / "server-log.txt", "w")  # noqa: SIM115  the child holds it
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return server


def wait_for_api(server: subprocess.Popen, api_url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the Prefect server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the Prefect server did not answer within {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to its process group, then SIGKILL after 5 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class Cluster:
    """The hosts, and the services every host reaches on the bridge: an S3 bucket and a Prefect API."""

    hosts: Hosts
    env: dict[str, str]  # what a process needs to reach them: the S3 endpoint and credentials, the API
    fs: object  # an fsspec file system on the S3 server, for the test's own reads and writes
    bucket: str
    workers: list[str] = field(default_factory=list)  # every worker host started, live or killed
    killed: list[str] = field(default_factory=list)

    @property
    def host_address(self) -> str:
        return self.hosts.host_address

    @property
    def live_workers(self) -> list[str]:
        return [name for name in self.workers if name not in self.killed]

    def add_workers(self, count: int, **env: str) -> None:
        """`count` more worker hosts (with `env` besides the cluster's), once the scheduler knows them."""
        self.hosts.env = {**self.env, **env}
        for _ in range(count):
            self.workers.append(f"worker-{len(self.workers) + 1}")
            self.hosts.add_worker(self.workers[-1])
        self.hosts.wait_for_workers(len(self.live_workers))

    def kill_worker(self, name: str) -> None:
        """Pull the plug on worker host `name`: SIGKILL, nothing cleaned up."""
        self.hosts.kill_worker(name)
        self.killed.append(name)

    def address(self, name: str) -> str:
        return self.hosts.addresses[name]

    def run_flow(self, config: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        """`embedpipe run` of the YAML `config`, from a client directory of its own in the root namespace."""
        client = self.hosts.root / "client"
        client.mkdir(exist_ok=True)
        (client / "run.yaml").write_text(config)
        environment = {**os.environ, **self.env, **env, "PYTHONPATH": str(REPO)}
        environment["PREFECT_HOME"] = str(client / ".prefect")
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "run.yaml"],
            cwd=client, env=environment, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


@contextmanager
def cluster(root: Path) -> Iterator[Cluster]:
    """A bridge with a scheduler host, a local S3 (moto's server) holding a fresh bucket, and a
    Prefect API server, all on the bridge; add workers with `add_workers`. All gone on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server narrates every request
    with Hosts(root / "hosts", {}) as hosts:
        host = hosts.host_address
        api_port = free_port(host)
        prefect = start_prefect_server(root / "prefect", host, api_port)  # starts while the rest is made
        s3 = ThreadedMotoServer(ip_address=host, port=free_port(host), verbose=False)
        try:
            s3.start()
            env = {
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": "http://{}:{}".format(*s3.get_host_and_port()),
                "PREFECT_API_URL": f"http://{host}:{api_port}/api", "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning",
            }  # fmt: skip
            import fsspec

            fs = fsspec.filesystem(
                "s3", key="testing", secret="testing", skip_instance_cache=True,
                client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]},
            )  # fmt: skip
            bucket = f"bucket-{uuid.uuid4().hex[:12]}"
            fs.mkdir(bucket)
            hosts.start_scheduler()
            wait_for_api(prefect, env["PREFECT_API_URL"], root / "prefect" / "server-log.txt")
            yield Cluster(hosts, env, fs, bucket)
        finally:
            stop(prefect)
            s3.stop()
