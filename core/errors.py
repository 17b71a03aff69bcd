"""The one base of every error HiCXR raises on purpose, so a command line can answer them all the same way.

Each module keeps its own error class (``ConfigError``, ``CheckpointError``, ``ImageError`` ...) with the message a
user needs; each also derives from :class:`HiCXRError`, so ``train.py``, ``pretrain.py`` and ``python -m
core.export`` catch one class, print ``error: <message>`` and exit with status 2 instead of a traceback. Anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class HiCXRError(Exception):
    """Base of the errors HiCXR raises about its inputs, files, configs and runs (the message says what to do)."""
