"""The tree keeps its shape: bin/ == console_scripts == qpy/programs == hier.PROGRAMS."""
from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

from qpy import controlfiles, hier

ROOT = Path(__file__).resolve().parent.parent
NOT_PROGRAMS = {"__init__", "options"}


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in lines)}


def test_bin_console_scripts_modules_and_hier_agree():
    bins = {p.name for p in (ROOT / "bin").iterdir()}
    modules = {p.stem for p in (ROOT / "qpy" / "programs").glob("*.py")} - NOT_PROGRAMS
    scripts = console_scripts()
    assert bins == set(scripts) == set(hier.PROGRAMS)
    assert {hier.module_name(b) for b in bins} == modules
    for name, target in scripts.items():
        assert target == f"qpy.programs.{hier.module_name(name)}:main"


def test_bin_shims_are_three_lines_running_isolated():
    for shim in (ROOT / "bin").iterdir():
        lines = shim.read_text().splitlines()
        assert lines[0] == "#!/usr/bin/env -S python3 -I", shim
        assert lines[2] == f"from qpy.programs.{hier.module_name(shim.name)} import main"
        assert lines[3] == "sys.exit(main(sys.argv[1:]))"
        assert shim.stat().st_mode & 0o111


def test_every_program_has_a_man_page_docstring_and_main():
    for path in (ROOT / "qpy" / "programs").glob("*.py"):
        if path.stem in NOT_PROGRAMS:
            continue
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree)
        assert doc and "RUNS AS" in doc, path
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), path


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_library_never_imports_programs():
    for path in (ROOT / "qpy").glob("*.py"):
        assert not any(i.startswith("qpy.programs") for i in _imports(path)), path


def test_library_never_raises_exit():
    """The library raises QmailError subclasses; only programs leave through errors.Exit."""
    for path in (ROOT / "qpy").glob("*.py"):
        if path.name != "errors.py":
            assert "qpy.errors.Exit" not in _imports(path), path


def test_programs_never_import_other_programs():
    programs = {p.stem for p in (ROOT / "qpy" / "programs").glob("*.py")} - NOT_PROGRAMS
    for path in (ROOT / "qpy" / "programs").glob("*.py"):
        others = {f"qpy.programs.{name}" for name in programs - {path.stem}}
        assert not _imports(path) & others, path


def test_only_prot_changes_uid():
    for path in (ROOT / "qpy").rglob("*.py"):
        if path.name == "prot.py":
            continue
        text = path.read_text()
        for call in ("os.setuid(", "os.setgid(", "os.setgroups(", "os.seteuid(", "os.setresuid("):
            assert call not in text, f"{path} calls {call}"


def test_every_module_imports_alone():
    modules = [f"qpy.{p.stem}" for p in (ROOT / "qpy").glob("*.py") if p.stem != "__init__"]
    modules += [f"qpy.programs.{p.stem}" for p in (ROOT / "qpy" / "programs").glob("*.py")]
    for module in modules:
        r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
        assert r.returncode == 0, (module, r.stderr.decode())


def test_shipped_control_files_restate_builtin_defaults():
    shipped = {p.name: p.read_bytes() for p in (ROOT / "control").iterdir()}
    expected = hier.control_defaults(b"localhost")
    assert shipped == expected
    for name in hier.CONTROL_FROM_DEFAULT:
        f = controlfiles.entry(name)
        assert shipped[name] == b"%d\n" % (f.default if f.initial is None else f.initial)


def test_no_file_over_700_lines_and_no_class_over_350():
    for path in (ROOT / "qpy").rglob("*.py"):
        text = path.read_text()
        assert text.count("\n") <= 700, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno - node.lineno < 350, (path, node.name)


def test_internals_lists_every_library_module():
    listed = set(re.findall(r"^- `(\w+)` — ", (ROOT / "INTERNALS.md").read_text(), re.M))
    modules = {p.stem for p in (ROOT / "qpy").glob("*.py")} - {"__init__"}
    assert listed == modules
