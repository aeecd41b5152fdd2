"""The package version, in a module of its own at the bottom of the import graph.

Every module that records or prints the version (provenance, run records, the HTTP User-Agent, ``--version``)
imports it from here, never from the package root, so no subpackage imports ``neurojepa/__init__``. The root
re-exports it as ``neurojepa.__version__``, and ``pyproject.toml`` reads it from here (``[tool.setuptools.dynamic]``),
so the number is written once.
"""

__version__ = "0.1.0"
