"""Bytes <-> messages. Pure functions, no sockets (see docs/architecture.md)."""
