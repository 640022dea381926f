"""vitcodec: image analysis straight from learned-compression bitstreams.

The sub-packages live in the repository's top-level folders (``codec/``, ``packages/``, ``models/``, ``edge/``,
``cloud/``, ``protos/``, ``demo/``) and are mapped into this namespace by ``pyproject.toml``. The modules here
(``results``, ``outputs``, ``console``, ``ort_session``, ``wire``) are what every layer shares; they import nothing else
of ours and never torch (docs/architecture.md, "Who may import whom").
"""

__version__ = "0.1.0"
