"""qpy.srs: SRS0/SRS1 addresses written, checked and turned back, from a real instance's controls."""
from __future__ import annotations

import base64
import grp
import hashlib
import hmac
import os
import pwd
import stat
import subprocess
import sys

import pytest

from conftest import control, make_instance
from qpy import hier, srs
from qpy.errors import ControlError

NOW = 20000 * 86400 + 4321          # day 20000: 20000 % 1024 = 544 = 17 * 32 + 0 → "RA"
DAY = 86400
SECRET = b"correct horse battery staple"


@pytest.fixture
def srs_home(home):
    """An instance whose SRS domain is fwd.example, with one known secret."""
    control(home, "srs_domain", "fwd.example\n")
    control(home, "srs_secrets", SECRET + b"\n")
    control(home, "locals", "test.example\nlocal.example\n")
    return home


def independent(secret: bytes, tt: bytes, *parts: bytes) -> bytes:
    """The hash as the SRS papers define it, computed here without qpy.srs."""
    mac = hmac.new(secret, (tt + b"".join(parts)).lower(), hashlib.sha1).digest()
    return base64.b64encode(mac)[:4]


def stamp_of(now: int) -> bytes:
    chars = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    day = now // DAY % 1024
    return bytes((chars[day >> 5], chars[day & 31]))


# -- the format, pinned -------------------------------------------------------------

def test_known_vector_srs0(srs_home):
    tt = stamp_of(NOW)
    assert tt == b"RA"
    want = b"SRS0=%s=RA=orig.example=alice@fwd.example" % independent(
        SECRET, tt, b"orig.example", b"alice")
    assert srs.forward_sender(b"alice@orig.example", NOW) == want
    # pinned with OpenSSL: printf raorig.examplealice | openssl dgst -sha1 -hmac '<SECRET>'
    # -binary | base64 → sR2eokvYSmPpvsbEug/5szPoc5Y=
    assert want == b"SRS0=sR2e=RA=orig.example=alice@fwd.example"


def test_hash_covers_the_lowercased_fields_in_order(srs_home):
    got = srs.forward_sender(b"Alice.B@Orig.Example", NOW)
    assert got == b"SRS0=%s=RA=Orig.Example=Alice.B@fwd.example" % independent(
        SECRET, b"ra", b"orig.example", b"alice.b")


def test_srs1_from_another_forwarders_srs0(srs_home):
    sender = b"SRS0=abcd=QQ=orig.example=bob@first.example"
    got = srs.forward_sender(sender, NOW)
    rest = b"=abcd=QQ=orig.example=bob"
    h = base64.b64encode(hmac.new(SECRET, b"first.example" + rest.lower(), hashlib.sha1).digest())[:4]
    assert got == b"SRS1=" + h + b"=first.example=" + rest + b"@fwd.example"
    assert got.startswith(b"SRS1=") and b"=first.example==abcd=QQ=" in got
    assert srs.reverse_recipient(got, NOW + 30 * DAY) == sender   # SRS1: no timestamp of ours


def test_srs1_from_srs1_keeps_the_first_forwarder(srs_home):
    sender = b"SRS1=zzzz=first.example==abcd=QQ=orig.example=bob@second.example"
    got = srs.forward_sender(sender, NOW)
    assert got.startswith(b"SRS1=") and got.endswith(
        b"=first.example==abcd=QQ=orig.example=bob@fwd.example")
    assert srs.reverse_recipient(got, NOW) == b"SRS0=abcd=QQ=orig.example=bob@first.example"


def test_srs0_with_another_separator_keeps_it(srs_home):
    sender = b"srs0+abcd=QQ=orig.example=bob@first.example"
    got = srs.forward_sender(sender, NOW)
    assert b"=first.example=+abcd=QQ=" in got
    assert srs.reverse_recipient(got, NOW) == b"SRS0+abcd=QQ=orig.example=bob@first.example"


def test_an_srs0_lookalike_that_does_not_parse_gets_srs0(srs_home):
    got = srs.forward_sender(b"SRS0=oops@first.example", NOW)
    assert got.startswith(b"SRS0=") and got.endswith(b"=first.example=SRS0=oops@fwd.example")
    assert srs.reverse_recipient(got, NOW) == b"SRS0=oops@first.example"


# -- round trips and checks ---------------------------------------------------------

@pytest.mark.parametrize("sender", [b"alice@orig.example", b"a=b+c@orig.example",
                                    b"x@y@orig.example", b"Mixed.Case@Orig.EXAMPLE"])
def test_round_trip(srs_home, sender):
    address = srs.forward_sender(sender, NOW)
    assert address != sender and address.endswith(b"@fwd.example")
    assert srs.check_recipient(address, NOW) is None
    assert srs.classify(address, NOW) == srs.VALID
    assert srs.reverse_recipient(address, NOW) == sender


def test_case_insensitive_hash_tag_stamp_and_domain(srs_home):
    address = srs.forward_sender(b"alice@orig.example", NOW)
    for variant in (address.lower(), address.upper(), address.swapcase()):
        assert srs.check_recipient(variant, NOW) is None, variant
        assert srs.reverse_recipient(variant, NOW).lower() == b"alice@orig.example"


def test_rotation_first_signs_every_one_verifies(srs_home):
    old = srs.forward_sender(b"alice@orig.example", NOW)
    control(srs_home, "srs_secrets", b"# rotated\nnew secret\n\n" + SECRET + b"\n")
    new = srs.forward_sender(b"alice@orig.example", NOW)        # the file changed: re-read
    assert new == b"SRS0=%s=RA=orig.example=alice@fwd.example" % independent(
        b"new secret", b"RA", b"orig.example", b"alice")
    assert new != old
    assert srs.reverse_recipient(old, NOW) == srs.reverse_recipient(new, NOW) == b"alice@orig.example"
    control(srs_home, "srs_secrets", b"new secret\n")
    assert srs.check_recipient(old, NOW) == srs.FORGED
    assert srs.check_recipient(new, NOW) is None


def test_expiry_at_maxage(srs_home):
    address = srs.forward_sender(b"alice@orig.example", NOW)
    assert srs.check_recipient(address, NOW + 21 * DAY) is None
    assert srs.check_recipient(address, NOW + 22 * DAY) == srs.EXPIRED
    assert srs.reverse_recipient(address, NOW + 22 * DAY) == address
    control(srs_home, "srs_maxage", "7\n")
    assert srs.check_recipient(address, NOW + 7 * DAY) is None
    assert srs.check_recipient(address, NOW + 8 * DAY) == srs.EXPIRED
    assert srs.check_recipient(address, NOW - DAY) == srs.EXPIRED    # from tomorrow: 1023 days
    assert srs.check_recipient(address, NOW + 1024 * DAY) is None    # the stamp wraps


def test_replayed_stamp_is_refused(srs_home):
    """An old address with today's stamp written in: the hash covers the stamp."""
    old = srs.forward_sender(b"alice@orig.example", NOW - 40 * DAY)
    assert srs.check_recipient(old, NOW) == srs.EXPIRED
    h, _, rest = old[5:].partition(b"=")
    replayed = b"SRS0=" + h + b"=RA=" + rest.split(b"=", 1)[1]
    assert srs.check_recipient(replayed, NOW) == srs.FORGED


def test_forged_hash_or_fields(srs_home):
    address = srs.forward_sender(b"alice@orig.example", NOW)
    h = address[5:9]
    other = (b"1" if h[:1] == b"0" else b"0") + h[1:]     # a digit: no case to ignore
    assert srs.check_recipient(address.replace(h, other), NOW) == srs.FORGED
    assert srs.check_recipient(address.replace(b"=alice@", b"=mallory@"), NOW) == srs.FORGED
    assert srs.check_recipient(address.replace(b"orig.example", b"evil.example"), NOW) == srs.FORGED
    assert srs.reverse_recipient(address.replace(b"=alice@", b"=mallory@"), NOW).startswith(b"SRS0=")
    srs1 = srs.forward_sender(b"SRS0=abcd=QQ=orig.example=bob@first.example", NOW)
    assert srs.check_recipient(srs1.replace(b"first.example", b"evil.example"), NOW) == srs.FORGED


@pytest.mark.parametrize("local", [
    b"SRS0=abcd", b"SRS0=abcd=RA", b"SRS0=abcd=RA=orig.example", b"SRS0=abcd=RA=orig.example=",
    b"SRS0==RA=orig.example=alice", b"SRS0=abc=RA=orig.example=alice",
    b"SRS0=abcde=RA=orig.example=alice", b"SRS0=ab!d=RA=orig.example=alice",
    b"SRS0=abcd=R1=orig.example=alice", b"SRS0=abcd=RAA=orig.example=alice",
    b"SRS1=abcd", b"SRS1=abcd=first.example", b"SRS1=abcd=first.example=x",
    b"SRS1=abcd=first.example==x=y", b"SRS1==first.example==abcd=QQ=orig.example=bob",
])
def test_malformed(srs_home, local):
    assert srs.check_recipient(local + b"@fwd.example", NOW) == srs.MALFORMED
    assert srs.reverse_recipient(local + b"@fwd.example", NOW) == local + b"@fwd.example"


@pytest.mark.parametrize("address", [
    b"SRS0=abcd=RA=orig.example=alice@elsewhere.example",   # not our srs_domain
    b"alice@fwd.example", b"srs0@fwd.example", b"SRS0x@fwd.example", b"SRS2=a=b=c=d@fwd.example",
    b"SRS0=", b"",
])
def test_not_ours_to_judge(srs_home, address):
    assert srs.check_recipient(address, NOW) is None
    assert srs.classify(address, NOW) is None
    assert srs.reverse_recipient(address, NOW) == address


@pytest.mark.parametrize("sender", [
    b"", b"#@[]", b"nodomain", b"@orig.example", b"x@",
    b"me@test.example", b"me@LOCAL.example", b"me@fwd.example",
    b"SRS0=abcd=RA=orig.example=alice@fwd.example",
    b"v@virt.example", b"v@host.sub.example", b"odd@a=b.example",
])
def test_senders_left_alone(srs_home, sender):
    control(srs_home, "virtualdomains", "virt.example:v\n.sub.example:s\nexc.example:\nu@user.example:u\n")
    assert srs.forward_sender(sender, NOW) == sender


@pytest.mark.parametrize("sender", [b"x@exc.example", b"u@user.example", b"x@sub.example"])
def test_virtualdomains_exceptions_and_user_entries_are_not_our_domains(srs_home, sender):
    control(srs_home, "virtualdomains", ".sub.example:s\nexc.example:\nu@user.example:u\n:catchall\n")
    assert srs.forward_sender(sender, NOW).startswith(b"SRS0=")


def test_locals_default_to_me(srs_home):
    os.unlink(srs_home / "control" / "locals")
    assert srs.forward_sender(b"x@test.example", NOW) == b"x@test.example"


@pytest.mark.parametrize("files", [{"srs_domain": None}, {"srs_secrets": None},
                                   {"srs_secrets": "\n# none yet\n"}, {"srs_domain": "\n"}])
def test_off_without_domain_or_secret(srs_home, files):
    address = srs.forward_sender(b"alice@orig.example", NOW)
    for name, text in files.items():
        if text is None:
            os.unlink(srs_home / "control" / name)
        else:
            control(srs_home, name, text)
    assert srs.forward_sender(b"alice@orig.example", NOW) == b"alice@orig.example"
    assert srs.check_recipient(address, NOW) is None
    assert srs.reverse_recipient(address, NOW) == address


def test_instance_switch_is_noticed(srs_home, tmp_path, monkeypatch):
    address = srs.forward_sender(b"alice@orig.example", NOW)
    other = make_instance(tmp_path / "other")
    control(other, "srs_domain", "fwd.example\n")
    control(other, "srs_secrets", "another\n")
    monkeypatch.setenv("QMAILHOME", str(other))
    assert srs.check_recipient(address, NOW) == srs.FORGED


def test_plain_addresses_read_no_controls(srs_home, monkeypatch):
    def boom():
        raise AssertionError("controls read")
    monkeypatch.setattr(srs, "current", boom)
    assert srs.reverse_recipient(b"bob@fwd.example") == b"bob@fwd.example"
    assert srs.check_recipient(b"bob@fwd.example") is None
    assert srs.forward_sender(b"") == b"" and srs.forward_sender(b"#@[]") == b"#@[]"


def test_unreadable_secret_is_a_temporary_failure(srs_home):
    os.unlink(srs_home / "control" / "srs_secrets")
    os.mkdir(srs_home / "control" / "srs_secrets")
    with pytest.raises(ControlError):
        srs.check_recipient(b"SRS0=abcd=RA=orig.example=alice@fwd.example", NOW)
    with pytest.raises(ControlError):
        srs.forward_sender(b"alice@orig.example", NOW)


def test_refusal_texts():
    assert srs.refusal(srs.FORGED) == b"forged SRS address (#5.7.1)"
    assert srs.refusal(srs.EXPIRED) == b"expired SRS address (#5.7.1)"
    assert srs.refusal(srs.MALFORMED) == b"malformed SRS address (#5.1.1)"


def test_stamp_round_trip():
    for day in (0, 31, 32, 1023, 1024, 20000):
        now = day * DAY + 1
        assert srs.stamp(now) == stamp_of(now)
        assert srs.stamp_age(srs.stamp(now), now) == 0
        assert srs.stamp_age(srs.stamp(now).lower(), now + 5 * DAY) == 5
    assert srs.stamp_age(b"A", NOW) is None and srs.stamp_age(b"A0", NOW) is None


# -- a new instance ------------------------------------------------------------------

def test_new_instance_has_srs_on(home):
    assert (home / "control" / "srs_domain").read_bytes() == b"test.example\n"
    secret = home / "control" / "srs_secrets"
    st = secret.stat()
    assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_uid == os.getuid()
    [line] = secret.read_bytes().splitlines()
    assert len(line) >= 32 and not line.startswith(b"#")
    assert srs.forward_sender(b"a@orig.example").endswith(b"@test.example")
    assert hier.check(str(home), False) == []


def test_secrets_differ_and_repair_keeps_them(tmp_path):
    a = make_instance(tmp_path / "a")
    b = make_instance(tmp_path / "b")
    sa = (a / "control" / "srs_secrets").read_bytes()
    assert sa != (b / "control" / "srs_secrets").read_bytes()
    hier.install(str(a), b"test.example", False)
    assert (a / "control" / "srs_secrets").read_bytes() == sa
    assert not list((a / "control").glob("*.tmp"))


def test_repairing_an_old_instance_makes_a_secret_but_does_not_switch_srs_on(tmp_path):
    old = make_instance(tmp_path / "old")
    os.unlink(old / "control" / "srs_domain")
    os.unlink(old / "control" / "srs_secrets")
    (old / "control" / "srs_secrets.tmp").write_bytes(b"stale")
    os.chmod(old / "control" / "srs_secrets.tmp", 0o644)
    hier.install(str(old), b"test.example", False)
    assert not (old / "control" / "srs_domain").exists()
    assert stat.S_IMODE((old / "control" / "srs_secrets").stat().st_mode) == 0o400
    assert not (old / "control" / "srs_secrets.tmp").exists()


def test_privileged_secret_is_read_by_qmaild_and_the_queue_accounts_only(priv_home):
    """qmaild:qmail 0440: qmaild (qmail-smtpd, -qmtpd) and group qmail (the queue writer) read
    it; another account does not; repairing keeps it and restores the mode."""
    secret = priv_home / "control" / "srs_secrets"
    st = secret.stat()
    qmaild = pwd.getpwnam("qmaild")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (qmaild.pw_uid, 0o440)
    assert st.st_gid == grp.getgrnam("qmail").gr_gid
    os.chmod(priv_home.parent, 0o755)

    def reads(user: str, group: str) -> bool:
        code = f"open({str(secret)!r}, 'rb').read()"
        return subprocess.run([sys.executable, "-I", "-c", code], user=user, group=group,
                              extra_groups=[], capture_output=True, timeout=60).returncode == 0
    assert reads("qmaild", "nofiles")          # tcpserver -u qmaild -g nofiles
    assert reads("qmailq", "qmail")            # the queue writer
    assert not reads("nobody", "nogroup")
    text = secret.read_bytes()
    os.chmod(secret, 0o644)
    assert hier.check(str(priv_home), True) == ["control/srs_secrets: mode 644 != 440"]
    hier.install(str(priv_home), b"test.example", True)
    assert hier.check(str(priv_home), True) == [] and secret.read_bytes() == text


def test_check_reports_a_readable_secret(home):
    os.chmod(home / "control" / "srs_secrets", 0o444)
    assert hier.check(str(home), False) == ["control/srs_secrets: mode 444 != 400"]
