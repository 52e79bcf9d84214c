"""Time tiles: the hour and the day, and moving a ring of tiles on, shared by the card's
record and the terminal's and merchant's."""

from __future__ import annotations

from array import array

from service.features.state import TileCount

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


def apply_count(record: array[float], count: TileCount) -> None:
    """Count one transaction in `record`: its latest time becomes at least `count.time`, and
    each ring of (count, ...) pairs moves on to its tile and adds one there (nothing when
    the tile has left the ring). Counts commute: applied in any order, the same record. A
    shared store applies them where the record lives (the Redis store, in Lua), so that
    writers counting at one busy terminal never conflict."""
    if count.time > record[0]:
        record[0] = count.time
    for base, tiles, head_index, tile in count.rings:
        advance_ring(record, base, tiles, 2, head_index, tile)
        if tile > record[head_index] - tiles:
            record[base + 2 * (tile % tiles)] += 1.0
