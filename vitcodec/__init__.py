"""vitcodec: image analysis straight from learned-compression bitstreams.

The sub-packages live in the repository's top-level folders (``codec/``, ``packages/``, ``models/``, ``edge/``,
``cloud/``, ``protos/``, ``demo/``) and are mapped into this namespace by ``pyproject.toml``. The modules here
(``results``, ``console``) are what the edge and the cloud side share; they import nothing heavy.
"""

__version__ = "0.1.0"
