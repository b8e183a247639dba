"""
The bounds on what a peer may say about itself (and a room's creator about the
room): serialised size, nesting depth and element count.

Metadata is held for as long as its peer is connected, once per room, and sent
to every member that joins after it; a small cap keeps a hostile client from
turning a 64 KiB frame of nested empty lists into megabytes of Python objects.
Every dialect's metadata reaches the hub through L{signaling.hub.Hub.join},
which applies the L{MetadataLimits} it was given: the one place of this check.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from .errors import InvalidMetadata


@attrs.frozen
class MetadataLimits:
    """
    :ivar max_size: Largest metadata in bytes, serialised as compact JSON.
    :ivar max_depth: Deepest nesting; the metadata object itself is level 1.
    :ivar max_elements: Most values in all, at every level (object members
        and list items, containers included).

    Each is 0 for unlimited.
    """

    max_size: int = 4096
    max_depth: int = 4
    max_elements: int = 64

    def check(self, metadata: Any) -> None:
        """
        :raises InvalidMetadata: C{metadata} exceeds a limit.
        """
        if not metadata:
            return
        # Depth and count first: they bound the walk and the serialisation.
        elements = 0
        level = [metadata]
        depth = 1
        while True:
            below: list = []
            for container in level:
                values = (
                    container.values() if isinstance(container, dict) else container
                )
                elements += len(values)
                if 0 < self.max_elements < elements:
                    raise InvalidMetadata(
                        f"metadata may hold at most {self.max_elements} values"
                    )
                below.extend(
                    value for value in values if isinstance(value, (dict, list))
                )
            if not below:
                break
            depth += 1
            if 0 < self.max_depth < depth:
                raise InvalidMetadata(
                    f"metadata may be nested at most {self.max_depth} levels deep"
                )
            level = below
        if not self.max_size:
            return
        try:
            size = len(orjson.dumps(metadata))
        except orjson.JSONEncodeError:
            raise InvalidMetadata("metadata must be plain JSON")
        if size > self.max_size:
            raise InvalidMetadata(f"metadata may be at most {self.max_size} bytes")
