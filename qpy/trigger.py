"""The lock/trigger FIFO: qmail-queue pulls it, qmail-send waits on it (docs/protocols.md §5)."""
from __future__ import annotations

import os

TRIGGER = "lock/trigger"


def pull(queue_dir: str = ".", name: str = TRIGGER) -> None:
    """Write one NUL byte to the trigger if anyone listens; ignore every error.

    ``name`` picks another FIFO of the same kind (qpy.maildrop.TRIGGER, for qmail-pickup).
    """
    try:
        fd = os.open(os.path.join(queue_dir, name), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, b"\0")
    except OSError:
        pass
    finally:
        os.close(fd)


def open_listen(queue_dir: str = ".", name: str = TRIGGER) -> int:
    """Open the trigger for qmail-send: read side, non-blocking.  Returns the fd."""
    return os.open(os.path.join(queue_dir, name), os.O_RDONLY | os.O_NONBLOCK)


def rearm(fd: int, queue_dir: str = ".", name: str = TRIGGER) -> int:
    """Close and reopen the trigger after it fired (drains it, resets EOF)."""
    os.close(fd)
    return open_listen(queue_dir, name)
