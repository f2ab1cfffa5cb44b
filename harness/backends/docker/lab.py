"""The lab's primitives on one Docker daemon: networks, containers, exec, files, veth pairs, addresses, sweep.

`ContainerLab` owns one run's Docker objects and knows nothing of NAT: harness.backends.docker.wiring builds
routers, wires and hosts from these primitives, and harness.backends.docker.backend adapts the result to the
runbook engine. Keeping them apart lets each be read (and changed) for one reason.

Contract and reasons:
- `transit` (the lab's internet) is an `internal=True` Docker bridge network with a subnet from 198.18.0.0/15,
  offered candidate by candidate until Docker accepts one: Docker's IPAM refuses overlaps atomically, so
  parallel labs (pytest-xdist workers, two CLI runs) never share a subnet and need no lock file. Only the relay
  and the routers' WAN sides sit on it, so every packet on it is addressed inside its own subnet and Docker's
  isolation rules let it through.
- LANs are not Docker networks at all: they live inside veth pairs made directly between two containers'
  network namespaces (`veth`), which touch no host bridge or firewall rule; `lan_subnet` only hands out
  readable, distinct /24s.
- Images are resolved, never pulled: a missing local image is a SetupError naming `dcutr-lab images build`.
- Everything carries the labels of `harness.labels`; `close()` removes by handle and then sweeps by the run
  label, so even objects created by a half-finished call are found. An open lab is registered with
  harness.cleanup, so interpreter exit closes one a caller forgot.
- Containers are started with the Docker SDK directly (create, then start: never a pull), from any thread:
  the lab is thread-safe, so a topology's containers start at once (`starting`) rather than one by one.
- Lab plumbing (addresses, routes, rulesets, conntrack flushes) runs from the lab machine inside a
  container's network and mount namespaces (`ns_run`, nsenter: milliseconds, where `docker exec` takes tens),
  with the container's own binaries. What a step or a SUT runs still goes through `exec`. Files the lab reads
  back as they grow (event logs, samples) are read through `/proc/<pid>/root` by byte offset (`read_from`).
  Both need the lab machine to be the Docker host, as the veth pairs already do; without nsenter they fall
  back to `docker exec`.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Self

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import EndpointConfig

from harness import cleanup
from harness import labels as lab_labels
from harness.backends.base import ExecResult
from harness.backends.docker.plumbing import Plumbing
from harness.backends.subnets import NetworkKind, candidates, host_routes, nth_host
from harness.errors import BadInput, LabError, SetupError

ImageResolver = Callable[[str], str]

# What lab plumbing run through nsenter sees as its environment: the container's tools, not the harness's PATH.
# Containers a lab starts at once; Docker queues the rest (2 cores start ~7 containers a second either way).
START_WORKERS = 8
LEAVE_WITHIN = 20  # seconds a killed container may take to exit and leave its network


def docker_client() -> docker.DockerClient:
    """A client with room for a lab's concurrent calls: parallel starts and one log stream per agent."""
    from harness.dockerd import connect

    try:
        client = docker.from_env(timeout=120, max_pool_size=32)
        client.ping()
    except docker.errors.DockerException:
        return connect(timeout=120)  # says what to start, as one line
    return client


@functools.cache
def _default_images(kind: str) -> str:
    """`base`, `router`, or `sut-<name>`: the image of that SUT (built in place, or the one built last).

    Resolved once per process (a SUT built in place asks cargo, ~1 s): every lab of a run, an e2e worker or a
    benchmark starts on the images the first one found."""
    from harness.images import ensure_image, sut_image
    from harness.sut import get_sut

    if kind.startswith("sut-"):
        return sut_image(get_sut(kind.removeprefix("sut-"))).tag
    return ensure_image(kind)


@dataclass
class LabNetwork:
    name: str
    subnet: ipaddress.IPv4Network
    docker_id: str
    _next: int = 10
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def next_ip(self) -> str:
        with self._lock:
            ip = nth_host(self.subnet, self._next)
            self._next += 1
        return ip


@dataclass
class LabContainer:
    """A container the lab started: the Docker object, and its main process's pid on the lab machine."""

    name: str  # the lab's short name (`client-router`), not Docker's
    wrapped: Container
    networked: bool = False  # it has an endpoint on a Docker network (the transit), not a shared namespace
    _pid: int | None = None

    def get_wrapped_container(self) -> Container:
        return self.wrapped

    @property
    def pid(self) -> int:
        """The pid of the container's init on the lab machine (cached: a lab container never restarts)."""
        if self._pid is None:
            self._pid = _container_pid(self.wrapped)
        return self._pid


def _container_pid(wrapped: Container) -> int:
    wrapped.reload()
    pid = int(wrapped.attrs["State"]["Pid"])
    if pid <= 0:
        raise SetupError(f"container {wrapped.name} is not running (state {wrapped.attrs['State']['Status']})")
    return pid


class ContainerLab(Plumbing):
    """One run's Docker objects: the transit network and the containers on it or in its veth pairs.

    A context manager; `close()` is idempotent and removes everything carrying this run's label. Subclassed by
    `DockerLab` (harness.backends.docker.wiring), which is what callers use. Safe to use from several threads.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        client: docker.DockerClient | None = None,
        images: ImageResolver | None = None,
    ) -> None:
        if os.geteuid() != 0:
            raise SetupError("the Docker lab creates veth pairs between containers: run it as root")
        self.run_id = run_id or lab_labels.new_run_id()
        self.client = client or docker_client()
        self._images = images or _default_images
        self._containers: dict[str, LabContainer] = {}
        self._pending: dict[str, Future[LabContainer]] = {}  # containers being started (`starting`)
        self._networks: list[LabNetwork] = []
        self._transit: LabNetwork | None = None
        self._lan_index = 0
        self._closed = False
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        self._checked_images: set[str] = set()
        cleanup.register(self)

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending.values())
        for future in pending:  # let half-started containers land, so they are removed below
            with contextlib.suppress(BaseException):
                future.result(timeout=60)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        # Docker 20.10 before 20.10.27 (Debian 12's docker.io) deadlocks its whole daemon when two containers
        # leave the same network at once (libnetwork: getSvcRecords locks network then controller, the endpoint
        # watch loop controller then network; moby/libnetwork#2649). Containers that only share a namespace
        # have no endpoint. A container leaves its network when its process exits, so the transit's are killed
        # one after another (each waited for), then every container is removed at once (a stopped one's removal
        # is its file system's, the slow part, and touches no network).
        containers = [self._containers[name] for name in reversed(list(self._containers))]
        for container in containers:
            if container.networked:
                self._leave_network(container)
        self.parallel([lambda c=c: self._remove_container(c.name) for c in containers])
        for network in reversed(self._networks):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.client.networks.get(network.docker_id).remove()
        sweep(self.client, run_id=self.run_id)
        cleanup.unregister(self)

    def _leave_network(self, container: LabContainer) -> None:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError, requests.exceptions.RequestException):
            container.wrapped.kill()
            container.wrapped.wait(timeout=LEAVE_WITHIN)

    def _remove_container(self, name: str) -> None:
        with self._lock:
            container = self._containers.pop(name, None)
        if container is None:
            return
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.wrapped.remove(force=True, v=True)

    def parallel(self, actions: Iterable[Callable[[], object]]) -> list[object]:
        """Run independent actions at once; every one finishes, then the first failure (if any) is raised."""
        actions = list(actions)
        if len(actions) <= 1:
            return [action() for action in actions]
        with ThreadPoolExecutor(max_workers=min(len(actions), START_WORKERS)) as pool:
            futures = [pool.submit(action) for action in actions]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        return [f.result() for f in futures]

    # -- naming and images -----------------------------------------------------------------------------

    def object_name(self, what: str) -> str:
        return lab_labels.object_name(self.run_id, what)

    def labels(self, role: str) -> dict[str, str]:
        return lab_labels.run_labels(self.run_id, role=role)

    def image(self, kind: str) -> str:
        return self._images(kind)

    def container(self, name: str) -> LabContainer:
        with self._lock:
            found = self._containers.get(name)
            pending = self._pending.get(name)
        if found is not None:
            return found
        if pending is not None:
            return pending.result()
        raise BadInput(f"no container named {name!r} in lab {self.run_id} ({', '.join(self._containers)})")

    # -- networks --------------------------------------------------------------------------------------

    def transit(self) -> LabNetwork:
        """The lab's internet; created on first use with a subnet no other lab or host route uses."""
        with self._lock:
            if self._transit is None:
                self._transit = self._create_network("transit", NetworkKind.transit)
            return self._transit

    def _create_network(self, what: str, kind: NetworkKind) -> LabNetwork:
        name = self.object_name(what)
        avoid = host_routes()
        last_error: Exception | None = None
        for attempt, subnet in enumerate(candidates(kind, avoid)):
            if attempt >= 64:
                break
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
            try:
                network = self.client.networks.create(
                    name, driver="bridge", internal=True, ipam=ipam, labels=self.labels(kind.value)
                )
            except docker.errors.APIError as error:
                # Docker refuses a subnet another network holds: that is how parallel labs stay apart.
                if "overlap" in str(error).lower():
                    last_error = error
                    continue
                raise SetupError(f"creating network {name} failed: {error.explanation or error}") from error
            lab_network = LabNetwork(name=name, subnet=subnet, docker_id=network.id)
            self._networks.append(lab_network)
            return lab_network
        raise SetupError(f"no free {kind.value} subnet for network {name}: {last_error}")

    def lan_subnet(self, pool: str | None = None) -> ipaddress.IPv4Network:
        """LANs live only inside veth pairs, so they need no allocation across labs; a distinct /24 per router
        keeps logs readable. A carrier NAT's inside comes from its own pool (RFC 6598 100.64.0.0/10)."""
        with self._lock:
            self._lan_index += 1
            index = self._lan_index
        network = ipaddress.IPv4Network(pool or "192.168.0.0/16")
        return list(network.subnets(new_prefix=24))[index]

    # -- containers ------------------------------------------------------------------------------------

    def starting(self, name: str, start: Callable[[], LabContainer]) -> None:
        """Begin starting a container in the background; `container(name)` waits for it. A failure surfaces
        there (or at close), never silently."""
        with self._lock:
            if self._closed:
                raise LabError(f"lab {self.run_id} is closed")
            if name in self._containers or name in self._pending:
                raise LabError(f"container {name!r} already exists in lab {self.run_id}")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=START_WORKERS, thread_name_prefix=f"lab-{self.run_id}")
            future = self._pool.submit(start)
            self._pending[name] = future

        def landed(done: Future[LabContainer], name: str = name) -> None:
            with self._lock:
                self._pending.pop(name, None)

        future.add_done_callback(landed)

    def is_pending(self, name: str) -> bool:
        with self._lock:
            return name in self._pending

    def _check_image(self, image: str) -> None:
        if image in self._checked_images:
            return
        try:
            # Never let Docker reach for a registry: a missing local image is a setup error, not a pull.
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SetupError(f"image {image} is missing: run `dcutr-lab images build`") from None
        self._checked_images.add(image)

    def _start_container(
        self,
        name: str,
        *,
        image: str,
        role: str,
        command: Sequence[str],
        network: LabNetwork | None = None,
        ip: str | None = None,
        network_mode: str | None = None,
        env: Mapping[str, str] | None = None,
        cap_add: Sequence[str] = (),
        sysctls: Mapping[str, str] | None = None,
        entrypoint: Sequence[str] | None = None,
    ) -> LabContainer:
        with self._lock:
            if name in self._containers:
                raise LabError(f"container {name!r} already exists in lab {self.run_id}")
            if self._closed:
                raise LabError(f"lab {self.run_id} is closed")
        kwargs: dict[str, object] = {
            "name": self.object_name(name),
            "labels": self.labels(role),
            "hostname": name[:63],
            "init": True,
            "cap_add": list(cap_add),
            "sysctls": dict(sysctls or {}),
            "environment": dict(env or {}),
            "detach": True,
        }
        if entrypoint is not None:
            kwargs["entrypoint"] = list(entrypoint)
        if network is not None:
            kwargs["network"] = network.name
            kwargs["networking_config"] = {network.name: EndpointConfig("1.41", ipv4_address=ip)}
        else:
            kwargs["network_mode"] = network_mode or "none"
            kwargs.pop("hostname")  # a container sharing another's namespace cannot set its own hostname
        self._check_image(image)
        created: Container | None = None
        try:
            # create + start, not run: `run` pulls a missing image, `create` only says it is missing.
            created = self.client.containers.create(image, list(command), **kwargs)
            created.start()
        except docker.errors.ImageNotFound as error:
            raise SetupError(f"image {image} is missing: run `dcutr-lab images build`") from error
        except docker.errors.APIError as error:
            with contextlib.suppress(Exception):
                (created or self.client.containers.get(self.object_name(name))).remove(force=True)
            raise SetupError(f"starting container {name} failed: {error.explanation or error}") from error
        container = LabContainer(name, created, networked=network is not None)
        with self._lock:
            self._containers[name] = container
        return container

    def exec(self, target: str, command: Sequence[str], timeout: float = 30.0) -> ExecResult:
        """Run a command in a lab container, bounded by `timeout` (coreutils `timeout` inside)."""
        wrapped = self.container(target).wrapped
        bounded = ["timeout", "--kill-after=2", f"{timeout:g}", *command]
        try:
            code, output = wrapped.exec_run(bounded, demux=False)
        except docker.errors.APIError as error:
            raise LabError(f"exec on {target} failed: {error.explanation or error}") from error
        return ExecResult(exit_code=int(code), output=(output or b"").decode("utf-8", "replace"))

    def must(self, target: str, command: Sequence[str], what: str, timeout: float = 30.0) -> str:
        result = self.exec(target, command, timeout=timeout)
        if result.exit_code != 0:
            raise SetupError(f"{what} on {target} failed (exit {result.exit_code}): {result.output.strip()}")
        return result.output

    def remove(self, name: str) -> None:
        self._remove_container(name)


def sweep(client: docker.DockerClient | None = None, *, run_id: str | None = None) -> tuple[int, int]:
    """Remove containers, then networks, labelled by the lab (one run, or every run). Returns the counts."""
    client = client or docker_client()
    label = f"{lab_labels.LABEL_RUN}={run_id}" if run_id else lab_labels.LABEL_RUN
    removed_containers = 0
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True, v=True)
            removed_containers += 1
    removed_networks = 0
    for network in client.networks.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            network.remove()
            removed_networks += 1
    return removed_containers, removed_networks
