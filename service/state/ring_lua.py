"""`tiles.apply_count` on one ring of a terminal's or merchant's record, in Lua, for the
Redis scripts that count on the server (`redis_store`'s commit, `redis_swipes`' swipe).

One definition, spliced into both scripts where they count, so the two cannot drift apart;
each is held to Python's bytes by its tests. A record is its 8-byte version, then
little-endian doubles (double i at byte 8 + 8i); a ring's tiles are (transactions, frauds)
pairs of doubles from double `first` on, and its head (the newest tile counted) is double
`head_index`.
"""

COUNT_IN_RING = r"""
local ONE = struct.pack('<dd', 1, 0)  -- a tile's (transactions, frauds) once counted anew
-- Count one transaction in `tile` of the ring at `first` (`tiles` long, its head `head`,
-- kept at double `head_index`): `read(i)` gives double i, `set(i, bytes)` writes from it.
local function count_in_ring(first, tiles, head_index, tile, head, read, set)
  local slot = tile % tiles
  local function empty(from, to)  -- tiles from..to of the ring (none if to < from)
    if to >= from then set(first + 2 * from, string.rep('\0', 16 * (to - from + 1))) end
  end
  if tile > head then  -- the ring moves on: the tiles it skips are emptied
    if tile - head >= tiles then
      empty(0, tiles - 1)
    else
      local skipped = (head + 1) % tiles
      if skipped <= slot then
        empty(skipped, slot)
      else
        empty(skipped, tiles - 1)
        empty(0, slot)
      end
    end
    set(first + 2 * slot, ONE)
    set(head_index, struct.pack('<d', tile))
  elseif tile > head - tiles then
    set(first + 2 * slot, struct.pack('<d', read(first + 2 * slot) + 1))
  end
end
"""
