"""REST API: one blueprint per resource (see docs/architecture.md)."""
