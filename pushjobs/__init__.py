"""pushjobs: push jobs to a fleet; a Python successor to Chef Push Jobs 2.1."""

__version__ = "0.1.0"
PROTOCOL_VERSION = "2.0"
