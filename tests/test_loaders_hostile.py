"""Malformed lab files: one line naming file/line/field, exit 2, nothing started, nothing left behind.

Timeouts here are hang guards (a refused file takes milliseconds), not performance assertions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from harness.checkpoints import LogLine, match_line
from harness.cli import main
from harness.errors import BadInput
from harness.runbook import load_runbook
from harness.sut import SUT_DIR, get_sut, load_sut_file
from harness.yamlsource import MAX_NODES, load_yaml
from tests.test_checkpoints import FIXTURES

PHASE4 = Path(__file__).resolve().parent.parent / "runbooks" / "phase4-mixed-nat.yaml"
BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{n}: &{n} [{','.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
)


def _one_line(message: str) -> str:
    assert "\n" not in message, message
    return message


def _bad(path: Path, loader=load_runbook) -> str:
    with pytest.raises(BadInput) as caught:
        loader(path)
    return _one_line(str(caught.value))


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# -- not text ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "NUL byte"),
        (b"name: x\x00\n", "NUL byte"),
        ("name: caf\u00e9\n".encode("latin-1"), "not UTF-8 text"),
        (b"\xff\xfe" + "name: x\n".encode("utf-16-le"), "not UTF-8 text"),
    ],
)
@pytest.mark.parametrize("loader", [load_runbook, load_sut_file, load_yaml])
def test_files_that_are_not_utf8_text(tmp_path, content, says, loader):
    path = _write(tmp_path, "f.yaml", content)
    message = _bad(path, loader)
    assert says in message and "f.yaml" in message


def test_inventory_that_is_not_text(tmp_path):
    from harness.backends.ssh import load_inventory

    message = _bad(_write(tmp_path, "fleet.yml", b"all:\n  hosts:\n    r\xe9lay: {}\n"), load_inventory)
    assert "fleet.yml:3: not UTF-8 text" in message


def test_latin1_error_names_the_line(tmp_path):
    message = _bad(_write(tmp_path, "r.yaml", "name: x\ndescription: ok\nnote: caf\u00e9\n".encode("latin-1")))
    assert "r.yaml:3: not UTF-8 text (byte 0xe9" in message


def test_a_utf8_bom_is_fine(tmp_path):
    assert load_yaml(_write(tmp_path, "b.yaml", "\ufeffname: x\n".encode())).data == {"name": "x"}


# -- shape: depth, aliases, size, duplicates, non-finite numbers ------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", ["a: " + "[" * 100_000 + "]" * 100_000, "a: " + "{x: " * 50_000 + "1" + "}" * 50_000])
def test_nesting_100000_deep_is_one_line(tmp_path, text):
    assert "nested deeper than" in _bad(_write(tmp_path, "deep.yaml", text))


def test_nesting_beyond_the_limit_names_the_line(tmp_path):
    text = "a:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(70)) + "  " * 71 + "v\n"
    message = _bad(_write(tmp_path, "deep.yaml", text), load_yaml)
    assert "nested deeper than 64 levels" in message and "deep.yaml:" in message


@pytest.mark.timeout(10)
def test_billion_laughs_is_refused_without_expanding(tmp_path):
    path = _write(tmp_path, "lol.yaml", BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 1000
    message = _bad(path)
    assert f"expands to more than {MAX_NODES:,} values through aliases" in message


def test_a_few_aliases_are_fine(tmp_path):
    source = load_yaml(_write(tmp_path, "a.yaml", "base: &b {x: 1}\none: *b\ntwo: *b\n"))
    assert source.data == {"base": {"x": 1}, "one": {"x": 1}, "two": {"x": 1}}


def test_too_large_file(tmp_path):
    message = _bad(_write(tmp_path, "big.yaml", "a: " + "x" * (2 << 20)), load_yaml)
    assert "larger than 1 MiB" in message


def test_duplicate_key_names_both_lines(tmp_path):
    text = PHASE4.read_text().replace("    within: 30s\n", "    within: 30s\n    within: 5s\n", 1)
    message = _bad(_write(tmp_path, "dup.yaml", text))
    assert "duplicate key 'within' (first at line" in message and "steps[1].within" in message
    line = int(message.split(":")[1])
    first = int(message.rsplit("line ", 1)[1].rstrip(")"))
    assert line == first + 1


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN", "1e999"])
def test_non_finite_within_is_refused(tmp_path, value):
    text = PHASE4.read_text().replace("within: 30s", f"within: {value}", 1)
    message = _bad(_write(tmp_path, "nan.yaml", text))
    assert "steps[1]" in message and "within" in message  # a float tag: not finite; `1e999`: not a duration


@pytest.mark.parametrize("value", ["0s", "0", "0ms"])
def test_zero_within_is_refused(tmp_path, value):
    text = PHASE4.read_text().replace("within: 30s", f"within: {value}", 1)
    message = _bad(_write(tmp_path, "zero.yaml", text))
    assert "steps[1].wait.within" in message and "can never be met" in message
    assert "Value error" not in message


def test_template_variable_error_points_at_the_key(tmp_path):
    text = PHASE4.read_text().replace(
        'LIBP2P_REMOTE_PEER_ID: "{{ server.peer_id }}"', 'LIBP2P_REMOTE_PEER_ID: "{{ server.nope }}"'
    )
    path = _write(tmp_path, "t.yaml", text)
    message = _bad(path)
    line = next(i for i, t in enumerate(text.splitlines(), start=1) if "server.nope" in t)
    assert f"t.yaml:{line}: steps[4].env.LIBP2P_REMOTE_PEER_ID: template variable 'server.nope'" in message


@pytest.mark.parametrize(
    "text",
    [
        "name: x\nsteps: [\n  - a\n",
        "name: x\n  bad: indent\n",
        "a: 'unterminated\n",
        "- a\nb: c\n",
        "a: b\n---\nc: d\n",
    ],
)
def test_yaml_syntax_errors_are_one_line(tmp_path, text):
    message = _bad(_write(tmp_path, "s.yaml", text), load_yaml)
    assert message.startswith(f"{tmp_path / 's.yaml'}:") or "s.yaml:" in message
    assert "not valid YAML" in message


# -- SUT files -----------------------------------------------------------------------------------------


def _sut(tmp_path: Path, name: str = "mine", **checkpoints: str) -> Path:
    data = yaml.safe_load((SUT_DIR / "kaspad-bridge.yaml").read_text())
    data["name"] = name
    for checkpoint, regex in checkpoints.items():
        data["checkpoints"][checkpoint] = {"regex": regex}
    return _write(tmp_path, f"{name}.yaml", yaml.safe_dump(data, sort_keys=False))


def test_sut_errors_name_file_line_field(tmp_path):
    path = _sut(tmp_path)
    path.write_text(path.read_text().replace("format: text", "format: texty"))
    message = _bad(path, load_sut_file)
    assert "mine.yaml:" in message and "format" in message and "Value error" not in message


def test_sut_regex_that_needs_backtracking_is_refused_at_load(tmp_path):
    message = _bad(_sut(tmp_path, evil=r"(?P<x>a)(?=b)\1"), load_sut_file)
    assert "checkpoints.evil.regex" in message and "mine.yaml:" in message


@pytest.mark.timeout(30)
def test_catastrophic_pattern_cannot_hang_a_run(tmp_path):
    sut = load_sut_file(_sut(tmp_path, nested=r"(?P<run>(a+)+)$"))
    line = LogLine(number=1, text="a" * 200_000 + "b")
    assert match_line(sut.checkpoints["nested"], line) is None  # RE2: linear, no backtracking


def test_sut_file_shadowing_a_builtin_needs_replace(tmp_path):
    path = _sut(tmp_path, name="kaspad-bridge")
    out = tmp_path / "out"
    args = ["verify", "-l", str(FIXTURES / "kaspad-bridge"), "--sut", "kaspad-bridge", "--sut-file", str(path)]
    assert main([*args, "-o", str(out)]) == 2
    assert not out.exists()
    try:
        assert main([*args, "--replace-sut", "--accept-log-only", "-o", str(out)]) == 0
    finally:
        from harness import sut as sut_module

        sut_module._extra.clear()
    assert get_sut("kaspad-bridge") is not None


# -- the CLI's one line ----------------------------------------------------------------------------------


def test_error_is_one_line_when_stderr_is_a_pipe(tmp_path, capsys):
    deep = tmp_path / ("a-very-long-directory-name-" * 6)
    deep.mkdir()
    path = _write(deep, "runbook-with-a-long-name.yaml", b"name: x\x00")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) > 200, err


def test_tables_to_a_pipe_are_not_cut_to_80_columns(monkeypatch):
    from harness.console import make_console

    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()
    assert not console.is_terminal and console.width >= 200


def test_run_with_a_bad_runbook_leaves_no_report_folder(tmp_path):
    reports = tmp_path / "reports"
    path = _write(tmp_path, "lol.yaml", BILLION_LAUGHS)
    assert main(["run", str(path), "--reports", str(reports)]) == 2
    assert not reports.exists()


# -- verify: binary logs, what the report says ------------------------------------------------------------


def test_verify_on_a_binary_log_says_not_text(tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(FIXTURES / "kaspad-bridge", logs)
    (logs / "client.log").write_bytes(bytes(range(256)) * 64)
    out = tmp_path / "out"
    assert main(["verify", "-l", str(logs), "--sut", "kaspad-bridge", "-o", str(out)]) == 2
    assert not out.exists()


def test_verify_accepts_a_stray_latin1_byte(tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(FIXTURES / "kaspad-bridge", logs)
    with (logs / "relay.log").open("ab") as handle:
        handle.write("2026-02-22 10:16:00.000+00:00 [INFO ] caf\u00e9\n".encode("latin-1"))
    assert (
        main(["verify", "-l", str(logs), "--sut", "kaspad-bridge", "--accept-log-only", "-o", str(tmp_path / "out")])
        == 0
    )


def test_verify_report_holds_no_real_path_or_host(tmp_path):
    logs = tmp_path / "home" / "alice" / "ec2-54-210-1-2.compute-1.amazonaws.com"
    shutil.copytree(FIXTURES / "kaspad-bridge", logs)
    (logs / "server-router.conntrack").rename(logs / "ip-10-0-3-1.conntrack")
    out = tmp_path / "out"
    assert main(["verify", "-l", str(logs), "--sut", "kaspad-bridge", "-o", str(out)]) in (0, 1)
    for path in out.rglob("*"):
        assert "10-0-3-1" not in path.name and "54-210" not in path.name
        if path.is_file():
            text = path.read_bytes().decode("utf-8", "replace")
            for real in ("alice", "54-210-1-2", "amazonaws", "10-0-3-1", "10.0.3.", str(tmp_path)):
                assert real not in text, (real, path)
    record = json.loads((out / "report.json").read_text())
    assert "<HOST_" in json.dumps(record)
