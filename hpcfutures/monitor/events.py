"""The event codes a :class:`~.recorder.Recorder` sends its writer, and how frames are cut.

Each event is a tuple whose first item is one of these codes; a frame is a 4-byte
little-endian length followed by a :mod:`marshal`-ed list of events.
"""

from __future__ import annotations

import struct

SUBMIT, STATE, TRY, END, CACHE, BLOCK, POOL, POOL_LOST, SAMPLE, RAW, FLUSH, CLOSE = range(12)
#: A dependency told after its child was submitted (a join app's inner tasks).
EDGE = 12

#: The length prefix of a frame.
FRAME = struct.Struct("<I")
