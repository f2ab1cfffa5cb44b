"""The Docker lab's teardown order, against a fake Docker client: containers with an endpoint on a Docker
network leave it (their process exits) one at a time, since Docker 20.10's libnetwork deadlocks the daemon when
two leave one network at once (moby/libnetwork#2649); then every container's removal runs in parallel."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from harness.backends.docker.lab import ContainerLab, LabContainer


class _Removal:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leaving = 0
        self.most_leaving = 0
        self.removing = 0
        self.most_removing = 0
        self.exited: set[str] = set()
        self.removed: list[str] = []

    def _enter(self, counter: str) -> None:
        with self.lock:
            setattr(self, counter, getattr(self, counter) + 1)
            most = f"most_{counter}"
            setattr(self, most, max(getattr(self, most), getattr(self, counter)))

    def _leave(self, counter: str) -> None:
        with self.lock:
            setattr(self, counter, getattr(self, counter) - 1)

    def container(self, name: str, networked: bool) -> LabContainer:
        def kill() -> None:
            self._enter("leaving")

        def wait(**_: object) -> None:
            time.sleep(0.05)  # the exit leaves the network: long enough for a second one to overlap
            self.exited.add(name)
            self._leave("leaving")

        def remove(**_: object) -> None:
            assert not networked or name in self.exited, f"{name} removed while still on its network"
            self._enter("removing")
            time.sleep(0.05)
            self._leave("removing")
            with self.lock:
                self.removed.append(name)

        wrapped = SimpleNamespace(kill=kill, wait=wait, remove=remove)
        return LabContainer(name, wrapped, networked=networked)  # type: ignore[arg-type]


def _client() -> SimpleNamespace:
    empty = SimpleNamespace(list=lambda **_: [], get=lambda _id: None)
    return SimpleNamespace(containers=empty, networks=empty)


def test_networked_containers_leave_one_at_a_time_then_all_are_removed_at_once() -> None:
    removal = _Removal()
    lab = ContainerLab("teardown", client=_client())  # type: ignore[arg-type]
    for name, networked in [("relay", True), ("a-router", True), ("a-wire", True), ("a", False),
                            ("a-proc1", False), ("b-proc1", False), ("relay-proc1", False)]:  # fmt: skip
        lab._containers[name] = removal.container(name, networked)
    lab.close()
    assert sorted(removal.removed) == sorted(["relay", "a-router", "a-wire", "a", "a-proc1", "b-proc1", "relay-proc1"])
    assert removal.exited == {"relay", "a-router", "a-wire"}
    assert removal.most_leaving == 1, "two containers left the transit network at once"
    assert removal.most_removing > 1, "removals ran one by one (slow for nothing)"
    assert not lab._containers
