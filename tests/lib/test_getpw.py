"""qpy.getpw: record format and the search rules that need no special accounts."""
from __future__ import annotations

import os
import pwd

from qpy import getpw


def test_encode_decode_roundtrip():
    e = getpw.Entry(b"joe", 1000, 100, b"/home/joe", b"-", b"ext-x")
    assert e.encode() == b"joe\x001000\x00100\x00/home/joe\x00-\x00ext-x\x00"
    assert getpw.decode(e.encode()) == e


def test_decode_rejects_malformed():
    for bad in (b"", b"joe\0", b"joe\0x\0100\0/h\0-\0e\0", b"joe\x001\x002\x00/h\x00-\x00e",
                b"joe\x001\x002\x00/h\x00-\x00e\x00extra\x00"):
        assert getpw.decode(bad) is None


def test_single_user_lookup_falls_back_to_alias_with_instance_home(home):
    e = getpw.lookup(b"No-Such-User-Here", priv=False)
    assert (e.uid, e.gid, e.home, e.dash, e.ext) == (
        os.getuid(), os.getgid(), str(home / "alias").encode(), b"-", b"No-Such-User-Here")


def test_single_user_mode_is_detected_from_the_queue_owner(home):
    assert getpw.single_user()


def test_find_user_never_returns_root_or_a_foreign_home():
    assert getpw.find_user(b"root") is None
    assert getpw.find_user(b"root-anything") is None
    # nobody's home (/nonexistent) does not exist
    assert getpw.find_user(b"nobody") is None


def test_find_user_accepts_the_invoking_user_in_single_user_mode():
    me = pwd.getpwuid(os.getuid())
    if me.pw_uid == 0:
        assert getpw.find_user(me.pw_name.encode(), only_uid=0) is None
        return
    found = getpw.find_user(me.pw_name.encode() + b"-Ext", only_uid=me.pw_uid)
    assert found is not None and (found.dash, found.ext) == (b"-", b"Ext")
