"""qpy: a mail transfer agent built the qmail way."""
__version__ = "0.1.0"
