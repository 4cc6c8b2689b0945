"""datemail: sendmail with a local-time Date line; the message is really queued."""
from __future__ import annotations

import os
import re

from conftest import run


def test_queues_with_local_date(home):
    r = run(home, "datemail", ["-t"], input=b"To: bob@x.y\nSubject: dm\n\nbody\n",
            env={"TZ": "EST5", "USER": "joe"})
    assert r.returncode == 0, r.stderr
    [name] = os.listdir(home / "queue" / "todo")
    mess = (home / "queue" / "mess" / str(int(name) % 23) / name).read_bytes()
    assert re.search(rb"\nDate: \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0500\nTo: bob@x.y\n", mess)
    assert mess.count(b"Date:") == 1
    todo = (home / "queue" / "todo" / name).read_bytes()
    assert todo.split(b"\0")[3:] == [b"Tbob@x.y", b""]
