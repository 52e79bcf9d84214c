"""A scored transaction counted by the Redis server itself, in the round trip that reads.

`SWIPE` (Lua, run atomically by the server) takes a transaction's keys and what
`card_history.card_swipe` says of it, and:

1. returns the transaction's record if one is held and live: a retry, nothing is counted;
2. otherwise reads the card's record (or, when it has none live, the one under its previous
   token), the terminal's and the merchant's, applies the swipe to them where they live
   (the card as `card_history.observe_card` does, the terminal and merchant as
   `tiles.apply_count` does), keeps the transaction's record, unanswered, and returns the
   records as they were before.

The session then computes the features in Python from those very records, so it computes
what the server wrote: a test holds the script to `observe_card`'s and `apply_count`'s
bytes. One entity's read and update are one script's, so two replicas scoring the same
card at once lose no update, and never run a session again. What the script writes is
what a swipe writes; the settling of outcomes due and the cached risk features, which
only readers need, are left to the next reader, as a count was before.

The script takes every key of the transaction: on Redis Cluster they would have to share a
hash slot (one `{...}` tag), which they do not: this store wants one server (with replicas
of its own if wanted).

Each record is an 8-byte little-endian version, then the codec bytes, and every record the
script writes gets the next version, so outcomes, still committed by compare-and-set
(`redis_store._COMMIT`), see it changed.
"""

from __future__ import annotations

from service.features.card_history import CARD_LAYOUT
from service.features.state import Swipe, TransactionRecord
from service.state.codec import encode_transaction
from service.state.ring_lua import COUNT_IN_RING

# KEYS: the transaction, the card, the terminal, then the merchant and the previous card
# when ARGV says so. ARGV: lifetime (ms, 0 for ever), horizon (s), then `card_swipe`'s
# eight values (time, hour, day, amount, probe, not present, terminal key, country code),
# merchant? (1/0), previous card? (1/0), the count's rings (day base, tiles, head index;
# hour base, tiles, head index), a new risk record's bytes before and after its tiles, and
# the transaction record's bytes up to its tiles. Returns {0, held} for a retry, else {1,
# held, card, previous card, terminal, merchant}: each as it was (false: none).
_SCRIPT = r"""
local ttl, horizon, t = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local oldest = t - horizon
local function keep(key, value)
  if ttl > 0 then redis.call('SET', key, value, 'PX', ttl) else redis.call('SET', key, value) end
end
-- A record is its 8-byte version, then little-endian doubles: the first is its latest time
-- (a transaction's: its own).
local function next_version(value)
  if not value then return struct.pack('<I4I4', 1, 0) end
  local low, high = struct.unpack('<I4I4', value)
  if low == 4294967295 then return struct.pack('<I4I4', 0, high + 1) end
  return struct.pack('<I4I4', low + 1, high)
end
local function live(value) return value and struct.unpack('<d', value, 9) >= oldest end

local held = redis.call('GET', KEYS[1])
if live(held) then return {0, held} end

local at, merchant_key, previous = 4, false, false
if ARGV[11] == '1' then merchant_key = KEYS[at]; at = at + 1 end
local card = redis.call('GET', KEYS[2])
local base = card
if not live(card) and ARGV[12] == '1' then
  previous = redis.call('GET', KEYS[at])
  base = previous
end

-- `observe_card`, on the record as doubles (r[i + 1] is Python's record[i]).
local CARD = '<' .. string.rep('d', $SIZE)
local r
if live(base) then
  r = {struct.unpack(CARD, base, 9)}
else
  r = {}
  for i = 1, $SIZE do r[i] = 0 end
  r[$LAST_TIME + 1], r[$HOUR_HEAD + 1], r[$DAY_HEAD + 1] = -math.huge, -1, -1
  for i = $RECENT_TIMES + 1, $RECENT_PROBES do r[i] = -math.huge end
  for i = $TERMINAL_SEEN + 1, $SIZE do r[i] = -math.huge end
end
local last = r[$LAST_TIME + 1]
local now, hour, day = last, r[$HOUR_HEAD + 1], r[$DAY_HEAD + 1]
if t > last then now, hour, day = t, tonumber(ARGV[4]), tonumber(ARGV[5]) end
local amount, probe, absent = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if last == -math.huge then r[$SHIFT + 1] = amount end
local position = r[$RECENT_NEXT + 1]
r[$RECENT_TIMES + position + 1] = now
r[$RECENT_PROBES + position + 1] = probe
r[$RECENT_NEXT + 1] = (position + 1) % $RECENT_EVENTS
local function advance(first, tiles, width, head_index, tile)
  local head = r[head_index + 1]
  if tile <= head then return end
  if tile - head >= tiles then
    for i = first + 1, first + width * tiles do r[i] = 0 end
  else
    for skipped = head + 1, tile do
      local slot = first + width * (skipped % tiles)
      for i = slot + 1, slot + width do r[i] = 0 end
    end
  end
  r[head_index + 1] = tile
end
advance($HOURS, $HOUR_TILES, 3, $HOUR_HEAD, hour)
local slot = $HOURS + 3 * (hour % $HOUR_TILES)
r[slot + 1], r[slot + 2], r[slot + 3] = r[slot + 1] + 1, r[slot + 2] + amount, r[slot + 3] + absent
advance($DAYS, $DAY_TILES, 3, $DAY_HEAD, day)
local shifted = amount - r[$SHIFT + 1]
slot = $DAYS + 3 * (day % $DAY_TILES)
r[slot + 1], r[slot + 2] = r[slot + 1] + 1, r[slot + 2] + shifted
r[slot + 3] = r[slot + 3] + shifted * shifted
local terminal_key, free, found = tonumber(ARGV[9]), $TERMINAL_KEYS, false
for s = $TERMINAL_KEYS, $TERMINAL_SEEN - 1 do
  if r[s + 1] == terminal_key then r[s + $TERMINAL_SLOTS + 1] = now; found = true; break end
  if r[s + $TERMINAL_SLOTS + 1] < r[free + $TERMINAL_SLOTS + 1] then free = s end
end
if not found then r[free + 1], r[free + $TERMINAL_SLOTS + 1] = terminal_key, now end
local country = tonumber(ARGV[10])
if country ~= 0 and r[$HOME_COUNTRY + 1] == 0 then r[$HOME_COUNTRY + 1] = country end
r[$LAST_TIME + 1] = now
keep(KEYS[2], next_version(card) .. struct.pack(CARD, unpack(r, 1, $SIZE)))

-- `apply_count`, in place on a terminal's or merchant's record: only what it changes.
local rings = {{tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])},
               {tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])}}
-- Built only when wanted: building its 4 KB on every call cost more than the counts.
local function new_record()
  return string.rep('\0', 8) .. ARGV[19]
    .. string.rep('\0', 16 * (rings[1][2] + rings[2][2])) .. ARGV[20]
end
$COUNT_IN_RING
local function count(key)
  local value = redis.call('GET', key)
  local record = value
  if not live(value) then record = new_record(); redis.call('SET', key, record) end
  local function double(index) return (struct.unpack('<d', record, 9 + 8 * index)) end
  local function set(index, bytes) redis.call('SETRANGE', key, 8 + 8 * index, bytes) end
  local latest = double(0)
  local counted_at, tile_hour = latest, double(rings[2][3])
  if t > latest then counted_at, tile_hour = t, tonumber(ARGV[4]) end
  local tiles_of = {math.floor(tile_hour / 24), tile_hour}
  for k = 1, 2 do
    local first, tiles, head_index = rings[k][1], rings[k][2], rings[k][3]
    count_in_ring(first, tiles, head_index, tiles_of[k], double(head_index), double, set)
  end
  redis.call('SETRANGE', key, 0, next_version(value) .. struct.pack('<d', counted_at))
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  return value, tile_hour
end
local terminal, terminal_hour = count(KEYS[3])
local merchant, merchant_hour = false, -1
if merchant_key then merchant, merchant_hour = count(merchant_key) end
keep(KEYS[1], next_version(held) .. ARGV[21]
  .. string.format('%d,%d,false,null]', terminal_hour, merchant_hour))
return {1, held, card, previous, terminal, merchant}
"""


def _with_layout(script: str) -> str:
    """The script with the ring count spliced in and the card record's offsets written in
    (longest names first, so that no name is replaced inside a longer one)."""
    script = script.replace("$COUNT_IN_RING", COUNT_IN_RING)
    for name in sorted(CARD_LAYOUT, key=len, reverse=True):
        script = script.replace(f"${name}", str(CARD_LAYOUT[name]))
    if "$" in script:
        raise ValueError("the swipe script names an offset the card's layout lacks")
    return script


SWIPE = _with_layout(_SCRIPT)
_UNANSWERED_TAIL = b"0,0,false,null]"


def swipe_arguments(swipe: Swipe, ttl_ms: int, horizon: bytes) -> list[bytes | int]:
    """`SWIPE`'s ARGV for `swipe`."""
    tx = swipe.transaction
    layout = swipe.layout
    arguments: list[bytes | int] = [ttl_ms, horizon]
    arguments += [repr(value).encode() for value in swipe.card]
    arguments += (
        b"1" if tx.merchant_id else b"0",
        b"0" if swipe.previous_card_id is None else b"1",
        *layout.rings,
        layout.new_head,
        layout.new_tail,
        transaction_head(swipe),
    )
    return arguments


def transaction_head(swipe: Swipe) -> bytes:
    """The codec bytes of the transaction's unanswered record up to its tiles, which the
    script writes in."""
    encoded = encode_transaction(TransactionRecord(swipe.transaction, 0, 0))
    if not encoded.endswith(_UNANSWERED_TAIL):
        raise ValueError("the transaction codec no longer ends a record as the script does")
    return encoded[: -len(_UNANSWERED_TAIL)]
