"""The package version: read by the build, sent in User-Agent and context.library."""

__version__ = "0.1.0"
