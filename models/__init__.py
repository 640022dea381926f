"""vitcodec.models: torch networks, training, evaluation and export.

Kept free of imports on purpose: edge devices locate the bundled zoo (``models/zoo/``) as package data of
this namespace without torch installed.
"""
