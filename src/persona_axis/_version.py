"""The library version, read once from the installed package's metadata.

A source tree that is not installed (``PYTHONPATH=src``) has no metadata; it reports
``0+unknown`` (a valid PEP 440 local version) so nothing mistakes it for a release.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("persona-axis")
except metadata.PackageNotFoundError:  # a source tree, not installed
    __version__ = "0+unknown"
