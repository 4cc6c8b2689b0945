"""qmail-send's recipient address rewriting (docs/control.md §2): which channel, which address.

``Rewriter`` holds locals, percenthack, virtualdomains and envnoathost (reread on
HUP by building a new one); ``rewrite(addr)`` returns (channel, address) with
channel 0 = local, 1 = remote.
"""
from __future__ import annotations

from dataclasses import dataclass

from qpy import addr, control

LOCAL, REMOTE = 0, 1


@dataclass
class Rewriter:
    """The control settings address rewriting needs."""

    locals: set[bytes]
    percenthack: set[bytes]
    virtualdomains: dict[bytes, bytes]
    envnoathost: bytes

    @classmethod
    def from_control(cls) -> "Rewriter":
        """Read the controls; ControlError if one is unreadable or locals has no default."""
        locals_ = control.read_list("locals")
        if locals_ is None:
            raise control.ControlError("Unable to read control/locals: no me either. (#4.3.0)")
        return cls(
            locals={d.lower() for d in locals_},
            percenthack={d.lower() for d in control.read_list("percenthack") or []},
            virtualdomains=control.read_map("virtualdomains") or {},
            envnoathost=control.read_host("envnoathost"),
        )

    def virtual_prefix(self, address: bytes) -> bytes | None:
        """The virtualdomains ``pre`` for an address (b"" for an exception), or None."""
        _, domain = addr.split(address)
        domain = (domain or b"").lower()
        for key in [address.lower(), *addr.domain_keys(domain), b""]:
            if key in self.virtualdomains:
                return self.virtualdomains[key]
        return None

    def rewrite(self, address: bytes) -> tuple[int, bytes]:
        """Return (channel, rewritten address) for one envelope recipient."""
        if b"@" not in address:
            address = address + b"@" + self.envnoathost
        while True:
            local, domain = addr.split(address)
            assert domain is not None
            if domain.lower() not in self.percenthack or b"%" not in local:
                break
            i = local.rfind(b"%")
            address = local[:i] + b"@" + local[i + 1:]
        local, domain = addr.split(address)
        if (domain or b"").lower() in self.locals:
            return LOCAL, address
        pre = self.virtual_prefix(address)
        if pre:
            return LOCAL, pre + b"-" + address
        return REMOTE, address
