"""vitcodec: image analysis straight from learned-compression bitstreams.

The sub-packages live in the repository's top-level folders (``codec/``, ``models/``, ``edge/``,
``cloud/``, ``protos/``) and are mapped into this namespace by ``pyproject.toml``.
"""

__version__ = "0.1.0"
