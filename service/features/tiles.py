"""Time tiles: the hour and the day, and moving a ring of tiles on, shared by the card's
record and the terminal's and merchant's."""

from __future__ import annotations

from array import array

HOUR = 3_600.0
DAY = 86_400.0


def advance_ring(
    record: array[float], base: int, tiles: int, width: int, head_index: int, tile: int
) -> None:
    """Move the ring of `tiles` tiles of `width` values at `base` on to `tile`, emptying the
    tiles it skips; `record[head_index]` holds the newest tile. Never moves back."""
    head = int(record[head_index])
    if tile <= head:
        return
    if tile - head >= tiles:
        record[base : base + width * tiles] = array("d", bytes(8 * width * tiles))
    else:
        empty = array("d", bytes(8 * width))
        for skipped in range(head + 1, tile + 1):
            slot = base + width * (skipped % tiles)
            record[slot : slot + width] = empty
    record[head_index] = tile
