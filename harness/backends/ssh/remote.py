"""One connected inventory host: connect (strict host keys, jump hosts), run shell, put and read files.

Contract:
- `RemoteHost.connect` reaches a host the way the inventory says and nothing else says (no ~/.ssh/config:
  its ProxyJump or HostName would bypass the inventory), through its jump host's connection when it has one.
  Host keys are strict: a key missing from known_hosts is refused unless `accept_new` (then trusted for this
  connection only, its fingerprint logged, known_hosts never written); a changed key is always refused. Any
  failure is one SetupError/BadInput line naming the host by its alias: why it failed, never its address.
- `run` is `sh -c SCRIPT` (POSIX sh whatever the login shell), with `sudo -n` when asked and the host has
  `ansible_become`; stdout and stderr merged; exit code -1 and a note when it ran past its timeout (the
  channel is closed, so a hung command cannot hold a run). `must` turns a failure into a SetupError whose
  output is scrubbed of inventory addresses.
- `put` sets the mode before writing the content (an env file may hold a seed); `read` returns None for a
  file that does not exist, so polling a log or an exit file needs no extra round trip.
- `prepare` learns the facts a run needs (home, machine, hostname), checks the prerequisites and creates the
  run directory with the node wrapper; once per host.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import logging
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backends.base import ExecResult
from harness.backends.ssh.inventory import Inventory, InventoryHost, shown
from harness.backends.ssh.scripts import REMOTE_ROOT, WRAPPER, parse_facts, prepare_script, probe_script
from harness.errors import BadInput, LabError, SetupError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
KEEPALIVE_SECONDS = 15  # NAT routers drop idle flows; a matrix run is long
SFTP_TIMEOUT = 15.0  # one SFTP request: a host that stops answering mid-run must not hold the run


class ConnectionLost(LabError):
    """The connection to a host is gone, or a request on it got no answer (harness.backends.ssh.backend turns it
    into one line naming the host, what happened and when)."""


class _AcceptNew:
    """Missing host key policy for --accept-new-host-keys: trust a key never seen before, for this run only.

    A key that *differs* from known_hosts is still refused by paramiko (BadHostKeyException). Nothing is written
    to known_hosts; the fingerprint is logged so the user can check it and add it for good.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        fingerprint = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
        log.warning(
            "accepting a new host key for inventory host %r: %s SHA256:%s", self.alias, key.get_name(), fingerprint
        )
        client.get_host_keys().add(hostname, key.get_name(), key)


@dataclass
class RemoteHost:
    """A host we are connected to, and what `prepare` learnt about it."""

    inventory: Inventory
    host: InventoryHost
    connection: Any  # fabric.Connection
    connect_timeout: float = CONNECT_TIMEOUT
    home: str = ""
    run_dir: str = ""
    hostname: str = ""
    machine: str = ""
    prepared: bool = False

    @property
    def alias(self) -> str:
        return self.host.name

    @property
    def is_router(self) -> bool:
        return self.host.dcutr_role == "router"

    @property
    def where(self) -> str:
        """The start of a message about this host: the inventory file and line, and the host's alias."""
        return self.inventory.where(self.alias)

    # -- connecting ----------------------------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        inventory: Inventory,
        alias: str,
        *,
        gateway: RemoteHost | None = None,
        accept_new: bool = False,
        timeout: float = CONNECT_TIMEOUT,
    ) -> RemoteHost:
        import paramiko
        from fabric import Config, Connection

        host = inventory.hosts[alias]
        timeout = host.connect_timeout or timeout
        key = inventory.key_file(host)
        known_hosts = inventory.known_hosts(host)
        # Checked here, not when loading: an inventory is valid before its keys are made (fleet.example.yml).
        if key is not None and not key.is_file():
            where = inventory.where(alias, "ansible_ssh_private_key_file")
            raise BadInput(f"{where}: ansible_ssh_private_key_file {shown(key)}: no such file")
        if host.dcutr_known_hosts is not None and not known_hosts.is_file():
            where = inventory.where(alias, "dcutr_known_hosts")
            raise BadInput(f"{where}: dcutr_known_hosts {shown(known_hosts)}: no such file")
        connect_kwargs: dict[str, Any] = {
            "banner_timeout": timeout,
            "auth_timeout": timeout,
            "channel_timeout": timeout,
        }
        if key is not None:
            connect_kwargs["key_filename"] = str(key)
        if host.ansible_password is not None:
            connect_kwargs["password"] = host.ansible_password.get_secret_value()
        if key is not None or host.ansible_password is not None:
            connect_kwargs["look_for_keys"] = False
            connect_kwargs["allow_agent"] = False
        connection = Connection(
            host.ansible_host,
            user=host.ansible_user,
            port=host.ansible_port,
            config=Config(ssh_config=paramiko.SSHConfig(), lazy=True),  # the inventory is the whole truth
            gateway=gateway.connection if gateway is not None else None,
            connect_timeout=timeout,
            connect_kwargs=connect_kwargs,
        )
        client = connection.client
        if known_hosts.is_file():
            try:
                # "system" host keys are never written back: accepting a new key cannot edit the user's file.
                client.load_system_host_keys(str(known_hosts))
            except (OSError, paramiko.SSHException) as error:
                raise BadInput(f"{shown(known_hosts)}: cannot read known hosts: {type(error).__name__}") from None
        client.set_missing_host_key_policy(_AcceptNew(alias) if accept_new else paramiko.RejectPolicy())
        try:
            connection.open()
        except Exception as error:
            with contextlib.suppress(Exception):
                connection.close()
            # Before the run: the inventory (or known_hosts, or the key) is what must change, so exit 2.
            raise BadInput(connect_error(inventory, host, known_hosts, error, timeout)) from None
        if connection.transport is not None:
            connection.transport.set_keepalive(host.keepalive or KEEPALIVE_SECONDS)
        return cls(inventory, host, connection, connect_timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()

    # -- shell -----------------------------------------------------------------------------------------------

    def run(self, script: str, *, timeout: float = 60.0, sudo: bool = False) -> ExecResult:
        """A shell command on the host, stdout and stderr merged; exit code -1 when it ran past `timeout`."""
        command = f"sh -c {shlex.quote(script)}"
        if sudo and self.host.ansible_become:
            command = f"sudo -n {command}"
        transport = self.connection.transport
        if transport is None or not transport.is_active():
            raise ConnectionLost(f"{self.inventory.display}: the SSH connection to host {self.alias!r} is gone")
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
        except Exception as error:
            raise ConnectionLost(f"{self.where}: cannot open a session: {type(error).__name__}") from None
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        try:
            channel.set_combine_stderr(True)
            channel.settimeout(0.5)
            channel.exec_command(command)
            while True:
                try:
                    data: bytes | None = channel.recv(65536)
                except TimeoutError:
                    data = None
                if data:
                    chunks.append(data)
                elif data == b"" and channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                    break
                if time.monotonic() > deadline:
                    output = b"".join(chunks).decode("utf-8", "replace")
                    return ExecResult(-1, f"{output}\n(timed out after {timeout:g}s)")
            code = channel.recv_exit_status()
        finally:
            channel.close()
        return ExecResult(code, b"".join(chunks).decode("utf-8", "replace"))

    def must(self, script: str, what: str, *, timeout: float = 60.0, sudo: bool = False) -> str:
        """`run`, its output when it exits 0, else a SetupError saying `what` failed (output scrubbed)."""
        result = self.run(script, timeout=timeout, sudo=sudo)
        if result.exit_code != 0:
            raise SetupError(
                f"{self.where}: {what} failed (exit {result.exit_code}): "
                f"{self.inventory.scrub(result.output.strip()[-300:])}"
            )
        return result.output

    # -- files -----------------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        transport = self.connection.transport
        return transport is not None and transport.is_active()

    def sftp(self) -> Any:
        client = self.connection.sftp()  # fabric opens one per connection and keeps it
        channel = client.get_channel()
        if channel is not None and channel.gettimeout() is None:
            channel.settimeout(SFTP_TIMEOUT)  # every request answers within it, or raises socket.timeout
        return client

    def put(self, path: str, data: bytes, mode: int = 0o600) -> None:
        with self.sftp().open(path, "wb") as handle:
            handle.chmod(mode)  # before the content: an env file may hold a seed
            handle.write(data)

    def upload(self, local: Path, path: str) -> None:
        self.sftp().put(str(local), path)

    def read(self, path: str, offset: int = 0) -> bytes | None:
        """A remote file from `offset`, None when it does not exist."""
        try:
            handle = self.sftp().open(path, "rb")
        except OSError as error:
            if getattr(error, "errno", None) == errno.ENOENT or isinstance(error, FileNotFoundError):
                return None
            raise
        with handle:
            if offset:
                handle.seek(offset)
            return handle.read()

    # -- the run directory -----------------------------------------------------------------------------------

    def prepare(self, run_id: str) -> None:
        """Facts, prerequisites, the run directory and (on hosts that run nodes) the wrapper. Once per host."""
        if self.prepared:
            return
        facts = parse_facts(self.must(probe_script(router=self.is_router), "checking prerequisites", timeout=30))
        missing = [value for key, value in facts if key == "missing"]
        if missing:
            raise SetupError(
                f"{self.where} lacks {', '.join(missing)}: install the prerequisites (inventories/provision.yml)"
            )
        values = dict(facts)
        self.home = values.get("home", "").rstrip("/")
        if not self.home.startswith("/"):
            raise SetupError(f"{self.where}: the login user has no home directory")
        self.machine = values.get("machine", "")
        self.hostname = values.get("hostname", "").strip()
        self.run_dir = f"{self.home}/{REMOTE_ROOT}/{run_id}"
        self.must(prepare_script(self.home, self.run_dir), "creating the run directory", sudo=self.is_router)
        if not self.is_router:
            self.put(f"{self.run_dir}/run.sh", WRAPPER.encode(), mode=0o700)
        self.prepared = True


def connect_error(
    inventory: Inventory, host: InventoryHost, known_hosts: Path, error: Exception, timeout: float
) -> str:
    """Why a connection failed, in one line naming the inventory line, the host by its alias and the key to look
    at (the error's text is scrubbed of addresses)."""
    import paramiko

    def where(key: str) -> str:
        return f"{inventory.where(host.name, key)} (port {host.ansible_port}): {key}"

    via = f" through jump host {host.dcutr_jump!r}" if host.dcutr_jump else ""
    if isinstance(error, paramiko.BadHostKeyException):
        return f"{where('dcutr_known_hosts')}: its host key does not match {shown(known_hosts)}: refusing to connect"
    if isinstance(error, paramiko.AuthenticationException):
        key = "ansible_ssh_private_key_file" if host.ansible_ssh_private_key_file else "ansible_user"
        return f"{where(key)}: authentication failed (check ansible_user and ansible_ssh_private_key_file)"
    if isinstance(error, paramiko.ChannelException):
        reason = error.text if hasattr(error, "text") else "channel refused"
        return f"{where('ansible_host')}: unreachable{via}: {reason}"
    if isinstance(error, paramiko.SSHException) and "known_hosts" in str(error):
        return (
            f"{where('dcutr_known_hosts')}: its host key is not in {shown(known_hosts)}: "
            "add it (ssh-keyscan) or pass --accept-new-host-keys"
        )
    if isinstance(error, socket.gaierror):
        return f"{where('ansible_host')}: cannot resolve it"
    if isinstance(error, TimeoutError | socket.timeout):
        return f"{where('ansible_host')}: unreachable{via}: no answer within {timeout:g}s"
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
        return f"{where('ansible_host')}: unreachable{via}: connection refused"
    if isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"{where('ansible_host')}: unreachable{via}: no route to it"
    return f"{where('ansible_host')}: unreachable{via}: {type(error).__name__}: {inventory.scrub(str(error))}"
