"""control/rcpthosts and control/morercpthosts.cdb: which recipient domains a server accepts.

qmail's rcpthosts.c: without control/rcpthosts every address is accepted (and
morercpthosts.cdb is not consulted); an address without ``@`` is accepted; else
the lowercased domain, or any suffix of it starting at a ``.``, must be listed in
rcpthosts or be a key of morercpthosts.cdb (keys lowercased by qmail-newmrh).
"""
from __future__ import annotations

from qpy import addr, cdb, control


class RcptHosts:
    """The two tables, read once (per connection, as qmail does)."""

    def __init__(self) -> None:
        lines = control.read_list("rcpthosts")
        self.domains = None if lines is None else control.DomainSet(lines)
        self.more = None
        if self.domains is not None:
            self.more = cdb.open_table(control.control_path("morercpthosts.cdb"))

    def accepts(self, address: bytes) -> bool:
        """True if a server may take mail for ``address``.  Raises CdbError."""
        if self.domains is None:
            return True
        at = address.rfind(b"@")
        if at < 0:
            return True
        domain = address[at + 1:].lower()
        if self.domains.matches_suffix(domain):
            return True
        if self.more is not None and domain:
            return any(self.more.get(key) is not None for key in addr.domain_keys(domain))
        return False

    def close(self) -> None:
        """Release the cdb."""
        if self.more is not None:
            self.more.close()
