"""The parts of a cache key: arguments in canonical form, and fingerprints of functions.

:mod:`.normalise` turns an argument into a canonical, JSON-serialisable value (the registry
of conversions that :func:`register_cache_key` extends); :mod:`.fingerprint` digests what a
function is and does, and keys functions passed as arguments by that digest.  The key of a
whole call, made of both, is :func:`hpcfutures.dataflow.memo.make_key`.

Importing the package imports both modules, so that functions are always keyable (the
fingerprint module registers their conversion with the normalise module).  The public names
are importable from :mod:`hpcfutures.dataflow.memo`.
"""

from __future__ import annotations

from . import fingerprint, normalise

__all__ = ["fingerprint", "normalise"]
