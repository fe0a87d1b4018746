"""dualgate's version, in a leaf: the CLI, a worker process and pyproject.toml read it here."""

__version__ = "0.1.0"
