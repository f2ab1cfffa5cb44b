"""The SSH backend (harness.backends.ssh.backend) and the parts it is made of.

    inventory.py   the inventory model, load_inventory and its checks (pure: no network)
    placement.py   which inventory host runs which runbook node, what to connect to (pure)
    scripts.py     the POSIX shell run on a host, as functions returning script text (pure)
    remote.py      one connected host: connect (strict host keys, jump hosts), run, put, read, prepare
    upload.py      content-addressed upload of the peer binaries, ELF machine check, sha256
    backend.py     SshBackend: the Backend protocol, composing the above

The names below are what the rest of the harness and the tests import.
"""

from harness.backends.ssh.backend import SshBackend
from harness.backends.ssh.inventory import Inventory, InventoryHost, load_inventory
from harness.backends.ssh.scripts import WRAPPER, cleanup_script, env_file, start_script, stop_script

__all__ = [
    "WRAPPER",
    "Inventory",
    "InventoryHost",
    "SshBackend",
    "cleanup_script",
    "env_file",
    "load_inventory",
    "start_script",
    "stop_script",
]
