"""The Lua scripts behind :class:`~pipeline.store.redis.RedisStatusStore`'s job writes.

Each is one atomic step on a job's hash and the indexes it touches (key layout in
:mod:`pipeline.store.redis`). Lifecycle constants are written as ``@NAME@`` placeholders and filled
in from :class:`~pipeline.models.JobState` by :func:`with_constants`, so the scripts and the Python
side cannot disagree on a state name or rank.
"""

from __future__ import annotations

from pipeline.models import JobState
from pipeline.store.base import TERMINAL_RANK

__all__ = [
    "APPEND_EVENT_LUA",
    "CREATE_LUA",
    "DELETE_LUA",
    "FINISH_AND_MOVE_LUA",
    "FINISH_STEP_LUA",
    "MOVE_LUA",
    "REQUEUE_LUA",
    "SET_FIELDS_LUA",
    "with_constants",
]

#: ARGV: ns, JSON list of [id, created_at, batch_id or null, spec JSON]. Returns per job 1 (created) or 0 (kept).
CREATE_LUA = """
local ns, flags = ARGV[1], {}
for i, job in ipairs(cjson.decode(ARGV[2])) do
    local id, created, batch = job[1], job[2], job[3]
    local key = ns .. ':job:' .. id
    if redis.call('EXISTS', key) == 1 then
        flags[i] = 0
    else
        local fields = {'job_id', id, 'state', '@QUEUED@', 'rank', '@QUEUED_RANK@',
                        'created_at', created, 'updated_at', created, 'spec', job[4]}
        if batch ~= cjson.null then
            fields[#fields + 1] = 'batch_id'
            fields[#fields + 1] = batch
            redis.call('ZADD', ns .. ':batch:' .. batch, created, id)
            redis.call('ZADD', ns .. ':batch-state:@QUEUED@:' .. batch, created, id)
        end
        redis.call('HSET', key, unpack(fields))
        redis.call('ZADD', ns .. ':jobs', created, id)
        redis.call('ZADD', ns .. ':ids', 0, id)
        redis.call('ZADD', ns .. ':state:@QUEUED@', created, id)
        flags[i] = 1
    end
end
return flags
"""
#: Moves a non-terminal job forward (rank <= new rank) and its id between the state indexes; a job
#: moving to succeeded adds its spec's fingerprint (if any) to ns:fp:succeeded and counts it in
#: ns:fp:succeeded-count. KEYS[1] job.
#: ARGV: ns, id, new state, new rank, now, then a step name (start_step) or "" and an optional
#: field and value (the terminal moves). Returns -1 (no job), 0 (refused: terminal or past that
#: rank), after a step start {the job's fields (HGETALL), the step's started_at and finished_at
#: before this start (nil if unset), the id of the step's start event (nil if none appended)}, or 1.
#: A step start may carry an event (ARGV 7-11, :data:`APPEND_EVENT_LUA`'s five), appended with
#: the start unless the step's previous delivery started and never finished.
MOVE_LUA = """
local key, ns, id, new, now, step = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6]
local current = redis.call('HMGET', key, 'state', 'rank', 'created_at', 'batch_id')
local old, rank, created, batch = current[1], tonumber(current[2]), current[3], current[4]
if not old then return -1 end
if rank >= @TERMINAL_RANK@ or rank > tonumber(ARGV[4]) then return 0 end
if old ~= new then
    redis.call('ZREM', ns .. ':state:' .. old, id)
    redis.call('ZADD', ns .. ':state:' .. new, created, id)
    if batch then
        redis.call('ZREM', ns .. ':batch-state:' .. old .. ':' .. batch, id)
        redis.call('ZADD', ns .. ':batch-state:' .. new .. ':' .. batch, created, id)
    end
end
redis.call('HSET', key, 'state', new, 'rank', ARGV[4], 'updated_at', now)
if new == '@SUCCEEDED@' then
    local fingerprint = cjson.decode(redis.call('HGET', key, 'spec'))['fingerprint']
    if type(fingerprint) == 'string' then
        redis.call('SADD', ns .. ':fp:succeeded', fingerprint)
        redis.call('HINCRBY', ns .. ':fp:succeeded-count', fingerprint, 1)
    end
end
if step == '' then
    if ARGV[7] then redis.call('HSET', key, ARGV[7], ARGV[8]) end
    return 1
end
step = 'step:' .. step .. ':'
local before = redis.call('HMGET', key, step .. 'started_at', step .. 'finished_at')
local attempts = redis.call('HINCRBY', key, step .. 'attempts', 1)
redis.call('HSET', key, step .. 'started_at', now)
redis.call('HDEL', key, step .. 'finished_at', step .. 'duration_s', step .. 'skipped')
local event = false
if ARGV[7] and (not before[1] or before[2]) then
    event = append_event(7, {attempt = tostring(attempts), batch_id = batch and cjson.encode(batch) or 'null'})
end
return {redis.call('HGETALL', key), before[1], before[2], event}
"""
#: Moves a failed or cancelled job back to queued and its id between the state indexes, keeping its
#: steps and error. KEYS[1] job. ARGV: ns, id, now. Returns -1 (no job), 0 (refused: any other
#: state), or the job's fields (HGETALL) after the move.
REQUEUE_LUA = """
local key, ns, id, now = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('HMGET', key, 'state', 'created_at', 'batch_id')
local old, created, batch = current[1], current[2], current[3]
if not old then return -1 end
if old ~= '@FAILED@' and old ~= '@CANCELLED@' then return 0 end
redis.call('ZREM', ns .. ':state:' .. old, id)
redis.call('ZADD', ns .. ':state:@QUEUED@', created, id)
if batch then
    redis.call('ZREM', ns .. ':batch-state:' .. old .. ':' .. batch, id)
    redis.call('ZADD', ns .. ':batch-state:@QUEUED@:' .. batch, created, id)
end
redis.call('HSET', key, 'state', '@QUEUED@', 'rank', '@QUEUED_RANK@', 'updated_at', now)
return redis.call('HGETALL', key)
"""
#: Removes ended jobs and their index entries (a succeeded one's fingerprint too, once no other
#: succeeded job has it: ns:fp:succeeded-count). ARGV: ns, then
#: job ids. Returns the ids removed (jobs not there or not terminal are left alone).
DELETE_LUA = """
local ns, removed = ARGV[1], {}
for i = 2, #ARGV do
    local id = ARGV[i]
    local key = ns .. ':job:' .. id
    local current = redis.call('HMGET', key, 'state', 'rank', 'batch_id')
    local state, rank, batch = current[1], tonumber(current[2]), current[3]
    if state and rank >= @TERMINAL_RANK@ then
        if state == '@SUCCEEDED@' then
            local fingerprint = cjson.decode(redis.call('HGET', key, 'spec'))['fingerprint']
            -- The fingerprint stays while another succeeded job has it. A job that succeeded before
            -- the counts existed has none: its count reads 0 and goes, as the set member did before.
            if type(fingerprint) == 'string'
                    and redis.call('HINCRBY', ns .. ':fp:succeeded-count', fingerprint, -1) <= 0 then
                redis.call('HDEL', ns .. ':fp:succeeded-count', fingerprint)
                redis.call('SREM', ns .. ':fp:succeeded', fingerprint)
            end
        end
        redis.call('DEL', key)
        redis.call('ZREM', ns .. ':jobs', id)
        redis.call('ZREM', ns .. ':ids', id)
        redis.call('ZREM', ns .. ':state:' .. state, id)
        if batch then
            redis.call('ZREM', ns .. ':batch:' .. batch, id)
            redis.call('ZREM', ns .. ':batch-state:' .. state .. ':' .. batch, id)
        end
        removed[#removed + 1] = id
    end
end
return removed
"""


#: A Lua function appending the event whose five arguments start at ARGV[i] (stream, max length,
#: body, once key or "", once TTL s; :class:`~pipeline.store.base.InlineEvent`) to the event log's
#: stream: its id, or "" when its once key was set before. ``fill`` maps names to JSON values put in
#: place of the body's ``"@name@"`` (what only the script knows: the attempt, the batch). The
#: stream's key is named at run time, like the index keys: a single Redis node.
APPEND_EVENT_LUA = """
local function append_event(i, fill)
    if ARGV[i + 3] ~= '' then
        if not redis.call('SET', ARGV[i + 3], '1', 'NX', 'EX', ARGV[i + 4]) then return '' end
    end
    local body = ARGV[i + 2]
    for name, value in pairs(fill or {}) do
        local mark = '"@' .. name .. '@"'
        local first, last = string.find(body, mark, 1, true)
        if first then body = string.sub(body, 1, first - 1) .. value .. string.sub(body, last + 1) end
    end
    return redis.call('XADD', ARGV[i], 'MAXLEN', '~', ARGV[i + 1], '*', 'e', body)
end
"""


def _finish(step: str, now: str, skipped: str) -> str:
    """Lua recording that a step ended (its finish time, duration and ``skipped``), from the named ARGVs."""
    return f"""
do
    local key = KEYS[1]
    if redis.call('EXISTS', key) == 0 then return -1 end
    local step, now = 'step:' .. {step} .. ':', {now}
    redis.call('HSET', key, step .. 'finished_at', now, step .. 'skipped', {skipped}, 'updated_at', now)
    local started = redis.call('HGET', key, step .. 'started_at')
    if started then
        redis.call('HSET', key, step .. 'duration_s', string.format('%.17g', tonumber(now) - tonumber(started)))
    else
        redis.call('HDEL', key, step .. 'duration_s')
    end
end
"""


#: KEYS[1] job. ARGV: step, now, skipped ("1"/"0"), the number of events n (0 or 1), n times
#: :data:`APPEND_EVENT_LUA`'s five (the step's end event), then field, value pairs stored with it (a
#: generation's sd_info). Returns -1 (no job) or {1, the event's id or nil}.
FINISH_STEP_LUA = (
    APPEND_EVENT_LUA
    + _finish("ARGV[1]", "ARGV[2]", "ARGV[3]")
    + """
local first = 5 + 5 * tonumber(ARGV[4])
for i = first, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local event = false
if ARGV[4] == '1' then event = append_event(5) end
return {1, event}
"""
)
#: The last step's finish and the job's move to succeeded (:data:`MOVE_LUA` with its result), in one
#: call. KEYS[1] job. ARGV: MOVE_LUA's eight (ns, id, the terminal state, its rank, now, "", "result",
#: the result), then the step, skipped ("1"/"0"), then up to two events (five arguments each, as
#: :data:`APPEND_EVENT_LUA`): the step's end, appended with the finish, and the job's end, appended
#: only if the job moved. Returns -1 (no job) or {0 (already terminal: only the step's finish was
#: recorded) or 1, the first event's id or nil, the second's or nil, then, when the job moved and has a
#: batch, the batch's jobs per state right after the move (ZCARD of each ``batch-state`` index, in
#: :class:`JobState` order: what ``count_by_state(batch_id=...)`` reads, without its round trip)}.
FINISH_AND_MOVE_LUA = (
    APPEND_EVENT_LUA
    + _finish("ARGV[9]", "ARGV[5]", "ARGV[10]")
    + """
local finished = false
if ARGV[11] then finished = append_event(11) end
local moved = (function()
"""
    + MOVE_LUA
    + """
end)()
local ended = false
if moved == 1 and ARGV[16] then ended = append_event(16) end
local reply = {moved, finished, ended}
local batch = moved == 1 and redis.call('HGET', KEYS[1], 'batch_id')
if batch then
    for _, state in ipairs({@STATES@}) do
        reply[#reply + 1] = redis.call('ZCARD', ARGV[1] .. ':batch-state:' .. state .. ':' .. batch)
    end
end
return reply
"""
)
#: KEYS[1] job. ARGV: field, value, ... Returns -1 (no job) or 1; never creates a job.
SET_FIELDS_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def with_constants(source: str) -> str:
    """``source`` with the lifecycle constants filled in from :class:`JobState`."""
    queued = JobState.QUEUED
    return (
        source.replace("@QUEUED@", queued.value)
        .replace("@QUEUED_RANK@", str(queued.rank))
        .replace("@TERMINAL_RANK@", str(TERMINAL_RANK))
        .replace("@SUCCEEDED@", JobState.SUCCEEDED.value)
        .replace("@FAILED@", JobState.FAILED.value)
        .replace("@CANCELLED@", JobState.CANCELLED.value)
        .replace("@STATES@", ", ".join(f"'{state.value}'" for state in JobState))
    )
