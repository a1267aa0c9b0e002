"""The version, in a module of its own: every module that records it imports this, never the package."""

__version__ = "0.1.0"
