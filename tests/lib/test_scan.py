"""qpy.scan: leading decimal digits, as qmail's scan_ulong reads them."""
from __future__ import annotations

from qpy import scan


def test_ulong_reads_the_leading_digits_of_bytes_and_str():
    assert scan.ulong(b"1200\n") == 1200 and scan.ulong("16x") == 16 and scan.ulong("3") == 3


def test_ulong_is_zero_without_a_leading_digit():
    assert scan.ulong(b"") == 0 and scan.ulong("x1") == 0 and scan.ulong(b" 5") == 0
    assert scan.ulong(b"-5") == 0 and scan.ulong("+5") == 0


def test_ulong_takes_ascii_digits_only():
    assert scan.ulong("1\u0663") == 1        # ARABIC-INDIC DIGIT THREE is not a digit here


def test_digits_keeps_leading_zeros_and_the_type():
    assert scan.digits(b"007 bond") == b"007" and scan.digits("42.5") == "42"
    assert scan.digits(b"abc") == b""
