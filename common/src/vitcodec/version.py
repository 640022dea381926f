"""The release of every vitcodec distribution (they are versioned together)."""

__version__ = "0.1.0"
