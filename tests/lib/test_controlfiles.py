"""qpy.controlfiles declares every control file once; readers and docs follow it."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import control
from qpy import control as ctl
from qpy import controlfiles, hier
from qpy.controlfiles import BY_NAME, FILES, KINDS

ROOT = Path(__file__).resolve().parents[2]

# qpy.control's functions taking a control name first, and the kinds each may read
READERS = {
    "read_int": {"int"}, "read_line": {"line"}, "read_line_me": {"line"}, "read_host": {"line"},
    "first_line": {"line"}, "read_list": {"list"}, "read_map": {"map"},
    "read_bytes": set(KINDS), "exists": set(KINDS), "control_path": set(KINDS),
}
# qmail-send's reads still pass their own defaults until the lead drops them (issue 13);
# remove this once no file matches.
# every file qmail's qmail-showctl and docs/control.md §1 know
QMAIL = ("badmailfrom", "bouncefrom", "bouncehost", "concurrencylocal", "concurrencyremote",
         "databytes", "defaultdomain", "defaulthost", "doublebouncehost", "doublebounceto",
         "envnoathost", "helohost", "idhost", "localiphost", "locals", "me", "morercpthosts",
         "morercpthosts.cdb", "percenthack", "plusdomain", "qmqpservers", "queuelifetime",
         "rcpthosts", "smtpgreeting", "smtproutes", "timeoutconnect", "timeoutremote",
         "timeoutsmtpd", "virtualdomains", "defaultdelivery", "concurrencyincoming")
CONTROL_PATH = re.compile(r"(?:^|[\s/'\"])control/([A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9])")


def sources() -> list[Path]:
    return sorted((ROOT / "qpy").rglob("*.py"))


def constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "string" assignments."""
    found = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            found[node.targets[0].id] = node.value.value
    return found


def control_calls():
    """(path, line, function, name or None, extra arguments) for every qpy.control reader call."""
    for path in sources():
        tree = ast.parse(path.read_text(), str(path))
        names = constants(tree)
        inside = path.name == "control.py" and path.parent.name == "qpy"
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    and func.value.id == "control" and func.attr in READERS):
                fname = func.attr
            elif inside and isinstance(func, ast.Name) and func.id in READERS:
                fname = func.id
            else:
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                name = arg.value
            elif isinstance(arg, ast.Name) and arg.id in names:
                name = names[arg.id]
            else:
                name = None
            yield path, node.lineno, fname, name, len(node.args) - 1 + len(node.keywords)


def docstring_nodes(tree: ast.Module) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_the_scan_finds_the_known_readers():
    found = {(path.name, name) for path, _, _, name, _ in control_calls()}
    assert ("qmail_smtpd.py", "servercert.pem") in found      # through a module constant
    assert ("qmail_remote.py", "smtproutes") in found
    assert ("rcpthosts.py", "morercpthosts.cdb") in found
    assert ("control.py", "me") in found


def test_every_control_read_in_qpy_is_declared():
    for path, line, fname, name, _ in control_calls():
        where = f"{path.relative_to(ROOT)}:{line} {fname}"
        if path.name == "control.py" and name is None:
            continue                  # qpy.control's own functions pass ``name`` along
        assert name is not None, f"{where}: name the control file literally"
        assert name in BY_NAME, f"{where}: control/{name} is not in qpy/controlfiles.py"
        assert BY_NAME[name].kind in READERS[fname], f"{where}: control/{name} is not {fname}'s kind"


def test_every_control_path_in_qpy_is_declared():
    for path in sources():
        tree = ast.parse(path.read_text(), str(path))
        docs = docstring_nodes(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docs):
                for name in CONTROL_PATH.findall(node.value):
                    if not name.endswith(".tmp"):           # a writer's temporary file
                        assert name in BY_NAME, f"{path.relative_to(ROOT)}:{node.lineno} {name}"
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("join", "path")):  # os.path.join(home, "control", "me")
                args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
                for first, second in zip(args, args[1:]):
                    if first == "control" and isinstance(second, str):
                        assert second in BY_NAME, f"{path.relative_to(ROOT)}:{node.lineno} {second}"


def test_readers_restate_no_default():
    for path, line, fname, name, extra in control_calls():
        if extra:
            pytest.fail(f"{path.relative_to(ROOT)}:{line} {fname}({name!r}, …): the default "
                        f"belongs in qpy/controlfiles.py")


def test_line_readers_follow_the_default_me_flag():
    for path, line, fname, name, _ in control_calls():
        if name is None or fname not in ("read_line", "read_line_me", "read_host"):
            continue
        assert BY_NAME[name].me == (fname != "read_line"), f"{path.name}:{line} {fname}({name!r})"


def test_declarations_are_well_formed():
    assert len(BY_NAME) == len(FILES)
    assert set(QMAIL) <= set(BY_NAME)
    for f in FILES:
        assert f.kind in KINDS, f.name
        assert f.meaning and "\n" not in f.meaning, f.name
        assert all(r in hier.PROGRAMS for r in f.readers), f.name
        if f.kind == "int":
            assert f.default is None or isinstance(f.default, int), f.name
        elif f.kind == "line":
            assert f.default is None or isinstance(f.default, bytes), f.name
        else:
            assert f.default is None, f.name
        assert not f.me or f.kind in ("line", "list"), f.name
        if f.show is not None and f.kind in ("int", "line", "list", "map"):
            assert f.show.count("{}") == 1, f.name
        if f.show is not None and f.kind not in ("int", "line"):
            assert f.absent is not None, f.name
    readable = [f for f in FILES if f.readers]
    assert all(f.show is not None for f in readable if f.name != "tcp.smtp.cdb")


def test_defaults_come_from_the_declarations(home):
    for name in os.listdir(home / "control"):
        os.unlink(home / "control" / name)
    for f in FILES:
        if not f.readers:
            continue
        if f.kind == "int":
            assert ctl.read_int(f.name) == f.default
        elif f.kind == "line" and f.me:
            assert ctl.read_line_me(f.name) == f.default
        elif f.kind == "line":
            assert ctl.read_line(f.name) == f.default
        elif f.kind == "list":
            assert ctl.read_list(f.name) is None
        elif f.kind == "map":
            assert ctl.read_map(f.name) is None
    control(home, "me", "m.test\n")
    assert all(ctl.read_line_me(f.name) == b"m.test" for f in FILES if f.me and f.kind == "line")
    assert ctl.read_list("locals") == [b"m.test"]


def test_a_changed_declaration_changes_what_readers_get(home, monkeypatch):
    for name in ("concurrencylocal", "bouncehost", "me"):
        (home / "control" / name).unlink(missing_ok=True)
    changed = {"concurrencylocal": 7, "bouncefrom": b"nobody", "bouncehost": b"bh.test"}
    for name, value in changed.items():
        monkeypatch.setitem(BY_NAME, name, replace(BY_NAME[name], default=value))
    assert ctl.read_int("concurrencylocal") == 7
    assert ctl.read_line("bouncefrom") == b"nobody"
    assert ctl.read_host("bouncehost") == b"bh.test"
    assert hier.control_defaults(b"x")["concurrencylocal"] == b"7\n"


def test_docs_file_is_the_rendering():
    committed = (ROOT / "docs" / "controlfiles.md").read_text()
    assert committed == controlfiles.markdown(), "run: python3 -m qpy.controlfiles > docs/controlfiles.md"
    r = subprocess.run([sys.executable, "-m", "qpy.controlfiles"], capture_output=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.decode() == committed


def test_docs_table_has_one_row_per_file():
    rows = [line for line in controlfiles.markdown().splitlines() if line.startswith("| ")]
    named = [row.split(" | ")[0][2:] for row in rows]
    assert [f.name for f in FILES] == [n for n in named if n in BY_NAME]
    assert "| bouncehost | line | me, else `bouncehost` | qmail-send |" in controlfiles.markdown()
    assert "| helohost | line | me (*required*) | qmail-remote, qpy |" in controlfiles.markdown()
