"""qmail-send's address rewriting (docs/control.md §2)."""
from __future__ import annotations

from conftest import control
from qpy.rewrite import LOCAL, REMOTE, Rewriter


def test_rules(home):
    control(home, "me", "me.test\n")
    control(home, "locals", "me.test\nLocal.test\n")
    control(home, "percenthack", "hack.test\n")
    control(home, "virtualdomains", "virt.test:vu\nexcept.virt.test:\njoe@other.test:jo\n.wild.test:w\n")
    os_env = Rewriter.from_control()
    assert os_env.rewrite(b"bob") == (LOCAL, b"bob@me.test")
    assert os_env.rewrite(b"bob@LOCAL.test") == (LOCAL, b"bob@LOCAL.test")
    assert os_env.rewrite(b"a%b%local.test@hack.test") == (LOCAL, b"a%b@local.test")
    assert os_env.rewrite(b"x@virt.test") == (LOCAL, b"vu-x@virt.test")
    assert os_env.rewrite(b"x@except.virt.test") == (REMOTE, b"x@except.virt.test")
    assert os_env.rewrite(b"joe@other.test") == (LOCAL, b"jo-joe@other.test")
    assert os_env.rewrite(b"ann@other.test") == (REMOTE, b"ann@other.test")
    assert os_env.rewrite(b"y@a.wild.test") == (LOCAL, b"w-y@a.wild.test")
    assert os_env.rewrite(b"z@far.test") == (REMOTE, b"z@far.test")


def test_envnoathost_and_catch_all(home):
    control(home, "envnoathost", "noat.test\n")
    control(home, "virtualdomains", ":catch\n")
    r = Rewriter.from_control()
    assert r.rewrite(b"u") == (LOCAL, b"catch-u@noat.test")
