"""qpy.warm: the one line a forked child writes about an exception nobody expected."""
from __future__ import annotations

import re

from qpy import warm
from qpy.errors import TempFail


def _raise(exc: BaseException) -> None:
    raise exc


RAISE_LINE = _raise.__code__.co_firstlineno + 1


def test_crash_line_names_type_message_and_where_on_one_line():
    try:
        _raise(ValueError("two\nlines"))
    except ValueError as e:
        line = warm.crash_line(e)
    m = re.fullmatch(rb"crashed: ValueError: two lines \((\S+):(\d+)\)\n", line)
    assert m, line
    assert m.group(1).endswith(b"tests/lib/test_warm.py") and int(m.group(2)) == RAISE_LINE


def test_crash_line_qualifies_our_types_and_leaves_out_an_empty_message():
    try:
        _raise(TempFail(""))
    except TempFail as e:
        assert warm.crash_line(e).startswith(b"crashed: qpy.errors.TempFail: Temporary failure.")
    try:
        _raise(KeyboardInterrupt())
    except KeyboardInterrupt as e:
        assert re.fullmatch(rb"crashed: KeyboardInterrupt \(\S+:\d+\)\n", warm.crash_line(e))


def test_crash_line_cuts_a_long_message():
    line = warm.crash_line(RuntimeError("x" * 10000))
    assert line == b"crashed: RuntimeError: " + b"x" * warm.MAX_CRASH_TEXT + b" (?)\n"
