"""The package version (read by the build and by ``reportgen --version``; imports nothing)."""

__version__ = "0.1.0"
