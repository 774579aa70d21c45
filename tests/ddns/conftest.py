"""The fixtures of the DDNS tests; the fakes themselves live in ddns_fakes.py, a name
no other test directory's helpers can shadow."""

from helpers.ddns import clock, echo, serve

__all__ = ["clock", "echo", "serve"]
