"""Envelope encoding and decoding (docs/protocols.md §1)."""
from __future__ import annotations

import pytest

from qpy import envelope


def test_round_trip():
    data = envelope.encode(b"a@b", [b"c@d", b"e@f"])
    assert data == b"Fa@b\0Tc@d\0Te@f\0\0"
    env = envelope.decode(data)
    assert (env.sender, env.recipients) == (b"a@b", [b"c@d", b"e@f"])


@pytest.mark.parametrize("data, error", [
    (b"", envelope.EnvelopeTruncated), (b"Fa@b\0Tc", envelope.EnvelopeTruncated),
    (b"Xa\0\0", envelope.EnvelopeError), (b"Fa\0Xb\0\0", envelope.EnvelopeError),
    (b"F" + b"x" * 1003 + b"\0\0", envelope.AddressTooLong),
])
def test_errors(data, error):
    with pytest.raises(error):
        envelope.decode(data)
