"""qpy.cdb against Debian's tinycdb, both directions, with many keys and colliding hashes."""
from __future__ import annotations

import subprocess
from collections import defaultdict

import pytest

from conftest import need_program
from qpy import cdb
from qpy.errors import CdbError


def djb(key: bytes) -> int:
    h = 5381
    for c in key:
        h = ((h << 5) + h) & 0xFFFFFFFF ^ c
    return h


def colliding_keys() -> list[bytes]:
    """Keys whose full 32-bit cdb hashes are equal in groups of two or more."""
    groups: dict[int, list[bytes]] = defaultdict(list)
    for a in range(256):
        for b in range(256):
            key = b"col" + bytes([a, b])
            groups[djb(key)].append(key)
    keys = [k for g in groups.values() if len(g) > 1 for k in g]
    assert len(keys) > 1000
    return keys


def records() -> list[tuple[bytes, bytes]]:
    recs = [(b"key%05d" % i, b"value %d \x00\xff" % i) for i in range(10000)]
    recs += [(k, b"c" + k) for k in colliding_keys()]
    recs += [(b"dup", b"first"), (b"dup", b"second"), (b"", b"empty key"), (b"nul\x00key", b"")]
    return recs


def cdbmake_text(recs: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"+%d,%d:%s->%s\n" % (len(k), len(v), k, v) for k, v in recs) + b"\n"


def test_colliding_keys_really_collide():
    keys = colliding_keys()
    by_hash = defaultdict(set)
    for k in keys:
        by_hash[djb(k)].add(k)
    assert all(len(s) >= 2 for s in by_hash.values())


def test_qpy_writes_tinycdb_reads(tmp_path):
    tool = need_program("cdb")
    path = tmp_path / "t.cdb"
    recs = records()
    cdb.rebuild(str(path), recs)
    dump = subprocess.run([tool, "-d", str(path)], capture_output=True, check=True).stdout
    assert dump == cdbmake_text(recs)
    out = subprocess.run([tool, "-q", str(path), "key01234"], capture_output=True, check=True).stdout
    assert out == b"value 1234 \x00\xff"
    some = colliding_keys()[777]
    assert b"\0" not in some
    assert not (tmp_path / "t.cdb.tmp").exists()


def test_tinycdb_writes_qpy_reads(tmp_path):
    tool = need_program("cdb")
    path = tmp_path / "t.cdb"
    recs = records()
    subprocess.run([tool, "-c", str(path)], input=cdbmake_text(recs), check=True)
    with cdb.Table(str(path)) as table:
        firsts: dict[bytes, bytes] = {}
        for k, v in recs:
            firsts.setdefault(k, v)
        for k, v in firsts.items():
            assert table.get(k) == v
        assert table.get_all(b"dup") == [b"first", b"second"]
        assert table.get(b"absent") is None
        assert table.items() == recs


def test_rebuild_replaces_atomically_and_lookup(tmp_path):
    path = str(tmp_path / "x.cdb")
    cdb.rebuild(path, [(b"a", b"1")])
    assert cdb.lookup(path, b"a") == b"1"
    cdb.rebuild(path, [(b"a", b"2")])
    assert cdb.lookup(path, b"a") == b"2"
    assert cdb.lookup(str(tmp_path / "missing.cdb"), b"a") is None


def test_corrupt_or_truncated_cdb_is_a_temporary_failure(tmp_path):
    path = tmp_path / "bad.cdb"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(CdbError):
        cdb.Table(str(path))


def test_open_cached_reuses_the_table_until_the_file_is_rebuilt(tmp_path):
    import os
    qcdb = cdb
    path = str(tmp_path / "t.cdb")
    assert qcdb.open_cached(path) is None
    qcdb.rebuild(path, [(b"k", b"one")])
    first = qcdb.open_cached(path)
    assert first.get(b"k") == b"one"
    assert qcdb.open_cached(path) is first
    qcdb.rebuild(path, [(b"k", b"two")])
    second = qcdb.open_cached(path)
    assert second is not first and second.get(b"k") == b"two"
    os.unlink(path)
    assert qcdb.open_cached(path) is None
