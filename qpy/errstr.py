"""System error texts as djb's libraries print them (error_str.c), for ucspi-tcp's messages.

ucspi-tcp says ``unable to read rules.cdb: file does not exist`` where Python
would say ``No such file or directory``; tools and people grep for the former.
"""
from __future__ import annotations

import errno

_TEXT = {
    errno.EINTR: "interrupted system call",
    errno.ENOMEM: "out of memory",
    errno.ENOENT: "file does not exist",
    errno.ETXTBSY: "text busy",
    errno.EIO: "input/output error",
    errno.EEXIST: "file already exists",
    errno.ETIMEDOUT: "timed out",
    errno.EINPROGRESS: "operation in progress",
    errno.EAGAIN: "temporary failure",
    errno.EPIPE: "broken pipe",
    errno.EPERM: "permission denied",
    errno.EACCES: "access denied",
    errno.ENXIO: "device not configured",
    errno.EPROTO: "protocol error",
    errno.EISDIR: "is a directory",
    errno.ECONNREFUSED: "connection refused",
    errno.ENOTDIR: "not a directory",
    errno.ESRCH: "no such process",
    errno.E2BIG: "argument list too long",
    errno.ENOEXEC: "exec format error",
    errno.EBADF: "file descriptor not open",
    errno.ECHILD: "no child processes",
    errno.EDEADLK: "operation would cause deadlock",
    errno.EFAULT: "bad address",
    errno.EBUSY: "device busy",
    errno.EXDEV: "cross-device link",
    errno.ENODEV: "device does not support operation",
    errno.EINVAL: "invalid argument",
    errno.ENFILE: "system cannot open more files",
    errno.EMFILE: "process cannot open more files",
    errno.ENOTTY: "not a tty",
    errno.EFBIG: "file too big",
    errno.ENOSPC: "out of disk space",
    errno.ESPIPE: "unseekable descriptor",
    errno.EROFS: "read-only file system",
    errno.EMLINK: "too many links",
    errno.EALREADY: "operation already in progress",
    errno.ENOTSOCK: "not a socket",
    errno.EMSGSIZE: "message too long",
    errno.ENOPROTOOPT: "protocol not available",
    errno.EPROTONOSUPPORT: "protocol not supported",
    errno.EOPNOTSUPP: "operation not supported",
    errno.EAFNOSUPPORT: "address family not supported",
    errno.EADDRINUSE: "address already used",
    errno.EADDRNOTAVAIL: "address not available",
    errno.ENETDOWN: "network down",
    errno.ENETUNREACH: "network unreachable",
    errno.ENETRESET: "network reset",
    errno.ECONNABORTED: "connection aborted",
    errno.ECONNRESET: "connection reset",
    errno.ENOBUFS: "out of buffer space",
    errno.EISCONN: "already connected",
    errno.ENOTCONN: "not connected",
    errno.ELOOP: "symbolic link loop",
    errno.ENAMETOOLONG: "file name too long",
    errno.EHOSTDOWN: "host down",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENOTEMPTY: "directory not empty",
    errno.EDQUOT: "disk quota exceeded",
    errno.ESTALE: "stale NFS file handle",
    errno.ENOLCK: "no locks available",
    errno.ENOSYS: "system call not available",
}


def text(err: BaseException | int | None) -> str:
    """The djb text for an errno or an OSError ("unknown error" if there is none)."""
    if isinstance(err, BaseException):
        err = getattr(err, "errno", None)
    if err is None:
        return "unknown error"
    return _TEXT.get(err, "unknown error")
