"""inventories/provision.yml is a playbook Ansible accepts and ansible-lint passes (its `production` profile,
offline); a copy with a mistake fails both, so these checks can fail. It is run for real against the simulated
fleet in e2e/test_fleet.py (twice: the second run changes nothing)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

INVENTORIES = Path(__file__).resolve().parent.parent / "inventories"
PLAYBOOK = INVENTORIES / "provision.yml"


def _tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: pip install -e '.[test]' (it is a test dependency)"
    return found


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible"), "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"}


def lint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("ansible-lint"), "--offline", "--profile", "production", "--nocolor", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=path.parent,
        env=_env(tmp_path),
    )


def syntax(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("ansible-playbook"), "-i", str(INVENTORIES / "fleet.example.yml"), "--syntax-check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_env(tmp_path),
    )


def test_the_playbook_passes_syntax_check_and_ansible_lint(tmp_path):
    checked = syntax(PLAYBOOK, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    linted = lint(PLAYBOOK, tmp_path)
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.parametrize(
    ("old", "new", "check", "word"),
    [
        pytest.param("ansible.builtin.command: uname -m", "command: uname -m", "lint", "fqcn", id="short-module-name"),
        pytest.param('        mode: "0700"\n', "", "lint", "risky-file-permissions", id="no-file-mode"),
        pytest.param(
            "      changed_when: false\n\n    - name: Install",
            "\n    - name: Install",
            "lint",
            "no-changed-when",
            id="changes-always",
        ),
        pytest.param("  tasks:\n    - name: Find", "  taskz:\n    - name: Find", "syntax", "taskz", id="bad-play-key"),
    ],
)
def test_a_broken_playbook_fails(tmp_path, old, new, check, word):
    text = PLAYBOOK.read_text()
    assert old in text, old
    broken = tmp_path / "provision.yml"
    broken.write_text(text.replace(old, new, 1))
    done = lint(broken, tmp_path) if check == "lint" else syntax(broken, tmp_path)
    assert done.returncode != 0, done.stdout + done.stderr
    assert word in done.stdout + done.stderr, done.stdout + done.stderr
