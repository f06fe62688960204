"""The one msgpack codec (placeholder: helpers packb/unpackb; message tags land next)."""
from __future__ import annotations

from typing import Any

import msgpack


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
