"""The SD pool's state in Redis: slot leases and health shared by workers on every machine.

Keys (prefix ``sdpipe:pool:``; a server's key is its URL without credentials):

- ``slots:<server>``: sorted set of lease holders scored by expiry (ms, Redis clock). Expired
  members are purged before every count, so a killed worker's slot frees when its lease ends.
- ``health:<server>``: hash of ``fails`` (in a row), ``benched``, ``until_ms``, ``cooldown_ms``,
  ``done``, ``failures``, ``total_s``, ``last_error``, ``last_error_ms``, ``last_turn``, and the
  loaded checkpoint: ``model``, ``model_hash``, ``model_ms`` (since), ``loading``, ``model_loads``.
- ``loads:<server>``: hash of ``n:<checkpoint key>`` and ``s:<checkpoint key>``: measured loads.
- ``wants``: sorted set of ``<checkpoint key>\t<holder>`` scored by expiry: jobs in the pool now and
  the checkpoint each wants (how much a switch would cost the others).
- ``probe:<server>``: who probes a benched server now (``SET NX PX``).
- ``turn``: a counter ordering acquisitions, so equal servers take turns.
- ``tickets:<class>``: sorted sets of job ids waiting for a server in priority class 0 (high), 1, 2,
  scored by expiry: a job defers to any live ticket of a better class (README "Priority").
- ``freed`` and ``freed:<server>``: lists a release pushes to; waiters ``BLPOP`` those of the servers
  they would take, so a freed slot is taken at once by a job that wants that server.

Every decision is one Lua script on Redis's own clock (``TIME``), so workers on machines whose
clocks disagree still agree on leases and cool-downs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.exceptions import NoScriptError

from pipeline.connections import RedisSettings, create_client
from pipeline.errors import StoreUnavailable
from pipeline.sd.backends import Backend
from pipeline.sd.pool.affinity import checkpoint_key
from pipeline.sd.pool.state import BackendStatus, Claim, HealthPolicy, LoadedModel, PoolState
from pipeline.settings import Settings
from pipeline.store.redis import missing_database

__all__ = ["POOL_PREFIX", "RedisPoolState"]

#: Prefix of the pool's keys (the status store uses ``sdpipe:``, Dramatiq ``sdpipe-dramatiq:``).
POOL_PREFIX = "sdpipe:pool:"
#: Longest :meth:`RedisPoolState.wait_for_release` (one BLPOP), in seconds; the pool waits at most
#: a second at a time anyway. The client's reply timeout is extended by it.
_LONGEST_WAIT_S = 5.0
#: Releases remembered for waiters; more would only wake waiters for slots already retaken.
_FREED_KEEP = 64
#: The same for each server's own list: few, as a waiter for that server pops stale ones one by one.
_FREED_KEEP_EACH = 4

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: slots1, health1, slots2, health2, ..., turn; ARGV: holder, lease_ms, avoid index (0: none), ordered (0/1),
# eligible, switch (0/1), exclusive (0/1), model, model key, max1, max2, ... Ordered (a Claim): the servers are
# ranked already (checkpoint affinity): the first healthy one with room among the first ``eligible``.
# ``last_turn`` orders equal servers by when each was last given a slot (a counter: ties are impossible).
# Healthy servers first; only when none is healthy (not merely busy), the benched one due back first.
_ACQUIRE = (
    _NOW
    + """
local holder, lease, avoid, ordered = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1'
local eligible, switch, exclusive = tonumber(ARGV[5]), ARGV[6] == '1', ARGV[7] == '1'
local model, model_key = ARGV[8], ARGV[9]
local best, best_free, best_last, any_healthy = 0, nil, nil, false
local fallback, fallback_until = 0, nil
local count = (#KEYS - 1) / 2
if ordered and exclusive then
  for i = 1, count do
    local health = KEYS[2 * i]
    if redis.call('HGET', health, 'benched') ~= '1' and redis.call('HGET', health, 'model_key') == model_key then
      return 0
    end
  end
end
for i = 1, count do
  local slots, health = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  local max = tonumber(ARGV[9 + i])
  local used = redis.call('ZCARD', slots)
  if ordered then
    if i > eligible then break end
    if used < max and redis.call('HGET', health, 'benched') ~= '1' then best = i; break end
  elseif redis.call('HGET', health, 'benched') ~= '1' then
    any_healthy = true
    if used < max then
      local free = (max - used) / max
      if i == avoid then free = free - 2 end
      local last = tonumber(redis.call('HGET', health, 'last_turn') or '0')
      if best == 0 or free > best_free or (free == best_free and last < best_last) then
        best, best_free, best_last = i, free, last
      end
    end
  elseif used < max then
    local due = tonumber(redis.call('HGET', health, 'until_ms') or '0')
    if fallback == 0 or due < fallback_until then fallback, fallback_until = i, due end
  end
end
if best == 0 and not any_healthy and not ordered then best = fallback end
if best > 0 then
  local health = KEYS[2 * best]
  redis.call('ZADD', KEYS[2 * best - 1], now + lease, holder)
  redis.call('HSET', health, 'last_turn', redis.call('INCR', KEYS[#KEYS]))
  if ordered and switch and redis.call('HGET', health, 'model_key') ~= model_key then
    redis.call('HSET', health, 'model', model, 'model_key', model_key, 'model_hash', '')
    redis.call('HSET', health, 'loading', '1', 'model_ms', now)
  end
end
return best
"""
)

# KEYS: slots; ARGV: holder, lease_ms. Returns 1 if the lease was still alive.
_RENEW = (
    _NOW
    + """
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if expiry and tonumber(expiry) > now then return 1 end
return 0
"""
)

# KEYS: slots, freed, health, freed:<server>; ARGV: holder, server key, keep, answered seconds ('' if none),
# keep of the server's own list
_RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
  redis.call('RPUSH', KEYS[4], ARGV[2])
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[5]), -1)
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], 'fails', 0, 'benched', '0', 'cooldown_ms', 0)
  redis.call('HINCRBY', KEYS[3], 'done', 1)
  redis.call('HINCRBYFLOAT', KEYS[3], 'total_s', ARGV[4])
end
return redis.call('HMGET', KEYS[3], 'model_key', 'model_hash', 'loading')
"""

# KEYS: health; ARGV: error, bench (0/1), threshold, cooldown min ms, cooldown max ms. Returns 1 if benched now.
_FAILURE = (
    _NOW
    + """
local h = KEYS[1]
local fails = redis.call('HINCRBY', h, 'fails', 1)
redis.call('HINCRBY', h, 'failures', 1)
redis.call('HSET', h, 'last_error', ARGV[1], 'last_error_ms', now)
if redis.call('HGET', h, 'benched') == '1' then return 0 end
if ARGV[2] ~= '1' and fails < tonumber(ARGV[3]) then return 0 end
local cooldown = tonumber(redis.call('HGET', h, 'cooldown_ms') or '0')
if cooldown <= 0 then cooldown = tonumber(ARGV[4]) else cooldown = math.min(cooldown * 2, tonumber(ARGV[5])) end
redis.call('HSET', h, 'benched', '1', 'until_ms', now + cooldown, 'cooldown_ms', cooldown)
return 1
"""
)

# KEYS: health1, probe1, health2, probe2, ...; ARGV: claim ms, claimer. Returns the indexes claimed.
_CLAIM_PROBES = (
    _NOW
    + """
local claimed = {}
for i = 1, #KEYS / 2 do
  local h = KEYS[2 * i - 1]
  if redis.call('HGET', h, 'benched') == '1' and tonumber(redis.call('HGET', h, 'until_ms') or '0') <= now then
    if redis.call('SET', KEYS[2 * i], ARGV[2], 'NX', 'PX', ARGV[1]) then table.insert(claimed, i) end
  end
end
return claimed
"""
)

# KEYS: health, probe, freed, freed:<server>; ARGV: ok (0/1), error, cooldown min ms, cooldown max ms, server key,
# keep, keep of the server's own list
_PROBE_RESULT = (
    _NOW
    + """
local h = KEYS[1]
redis.call('DEL', KEYS[2])
if ARGV[1] == '1' then
  redis.call('HSET', h, 'benched', '0', 'fails', 0)
  redis.call('RPUSH', KEYS[3], ARGV[5])
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[6]), -1)
  redis.call('RPUSH', KEYS[4], ARGV[5])
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[7]), -1)
  return 0
end
local cooldown = tonumber(redis.call('HGET', h, 'cooldown_ms') or '0')
if cooldown <= 0 then cooldown = tonumber(ARGV[3]) else cooldown = math.min(cooldown * 2, tonumber(ARGV[4])) end
redis.call('HSET', h, 'until_ms', now + cooldown, 'cooldown_ms', cooldown)
if ARGV[2] ~= '' then redis.call('HSET', h, 'last_error', ARGV[2], 'last_error_ms', now) end
return 0
"""
)

# KEYS: slots1, health1, loads1, ...; returns {now, in_use1, {health1 flat}, {loads1 flat}, in_use2, ...}
_STATUS = (
    _NOW
    + """
local out = {now}
for i = 1, #KEYS / 3 do
  table.insert(out, redis.call('ZCOUNT', KEYS[3 * i - 2], '(' .. now, '+inf'))
  table.insert(out, redis.call('HGETALL', KEYS[3 * i - 1]))
  table.insert(out, redis.call('HGETALL', KEYS[3 * i]))
end
return out
"""
)

# KEYS: health; ARGV: model ('' none), hash, loading (0/1), counts a load (0/1), model key. Returns the model before.
_SET_MODEL = (
    _NOW
    + """
local before = redis.call('HGET', KEYS[1], 'model')
redis.call('HSET', KEYS[1], 'model', ARGV[1], 'model_hash', ARGV[2], 'model_ms', now, 'loading', ARGV[3])
redis.call('HSET', KEYS[1], 'model_key', ARGV[5])
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'model_loads', 1) end
return before
"""
)

# KEYS: health, loads; ARGV: checkpoint key, seconds
_RECORD_LOAD = """
redis.call('HINCRBY', KEYS[2], 'n:' .. ARGV[1], 1)
redis.call('HINCRBYFLOAT', KEYS[2], 's:' .. ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], 'loading', '0')
redis.call('HINCRBY', KEYS[1], 'model_loads', 1)
return 0
"""

# KEYS: wants; ARGV: member, ttl ms
_WANT = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 0
"""
)

# KEYS: wants; returns the live members
_WANTS = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)


# KEYS: tickets of the class; ARGV: ttl ms, job ids...
_TICKET = (
    _NOW
    + """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
return 0
"""
)

# KEYS: tickets of the better classes, best first. Returns 1 if any holds a live ticket.
_OUTRANKED = (
    _NOW
    + """
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) > 0 then return 1 end
end
return 0
"""
)


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def _decode_hash(flat: Sequence[bytes]) -> dict[str, str]:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


class RedisPoolState(PoolState):
    """The pool state in Redis, for workers on any number of machines."""

    def __init__(self, client: redis.Redis, *, dsn_masked: str = "Redis") -> None:
        self._client = client
        self._dsn_masked = dsn_masked
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._failure = client.register_script(_FAILURE)
        self._claim = client.register_script(_CLAIM_PROBES)
        self._probe_result = client.register_script(_PROBE_RESULT)
        self._status = client.register_script(_STATUS)
        self._set_model = client.register_script(_SET_MODEL)
        self._record_load = client.register_script(_RECORD_LOAD)
        self._want = client.register_script(_WANT)
        self._wants = client.register_script(_WANTS)
        self._ticket = client.register_script(_TICKET)
        self._outranked = client.register_script(_OUTRANKED)
        self._freed = POOL_PREFIX + "freed"
        self._wants_key = POOL_PREFIX + "wants"

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisPoolState:
        """The pool state on the Redis of ``settings``, with a client from
        :func:`pipeline.connections.create_client` whose reply timeout outlasts a BLPOP wait.

        Raises:
            ConfigError: REDIS_URL is not a Redis URL.
        """
        redis_settings = RedisSettings.from_settings(settings)
        client = create_client(redis_settings, blocking_s=_LONGEST_WAIT_S)
        return cls(client, dsn_masked=redis_settings.url_masked)

    @property
    def client(self) -> redis.Redis:
        """The Redis client the pool state uses."""
        return self._client

    @staticmethod
    def _slots(key: str) -> str:
        return f"{POOL_PREFIX}slots:{key}"

    @staticmethod
    def _health(key: str) -> str:
        return f"{POOL_PREFIX}health:{key}"

    @staticmethod
    def _loads(key: str) -> str:
        return f"{POOL_PREFIX}loads:{key}"

    def _freed_of(self, key: str) -> str:
        return f"{self._freed}:{key}"

    @contextmanager
    def _reaching_redis(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            missing = missing_database(exc, f"{self._dsn_masked} has no such database")
            if missing is not None:
                raise missing from exc
            raise StoreUnavailable(
                f"cannot reach Redis at {self._dsn_masked} for the SD pool: {exc}",
            ) from exc

    def _run(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with self._reaching_redis():
            return script(keys=list(keys), args=list(args))

    def acquire(
        self, backends: Sequence[Backend], holder: str, *, lease_s: float, avoid: str | None, claim: Claim | None = None
    ) -> str | None:
        keys = [k for b in backends for k in (self._slots(b.key), self._health(b.key))] + [POOL_PREFIX + "turn"]
        avoid_index = next((i + 1 for i, b in enumerate(backends) if b.key == avoid), 0)
        claimed: list[Any] = [0, 0, 0, 0, "", ""]
        if claim is not None:
            claimed = [1, claim.eligible, int(claim.switch), int(claim.exclusive), claim.model, claim.key]
        args = [holder, _ms(lease_s), avoid_index, *claimed, *(b.max_slots for b in backends)]
        best = int(self._run(self._acquire, keys, args))
        return backends[best - 1].key if best > 0 else None

    def renew(self, key: str, holder: str, *, lease_s: float) -> bool:
        return bool(self._run(self._renew, [self._slots(key)], [holder, _ms(lease_s)]))

    def release(self, key: str, holder: str, *, answered_s: float | None = None) -> LoadedModel:
        answered = "" if answered_s is None else repr(float(answered_s))
        keys = [self._slots(key), self._freed, self._health(key), self._freed_of(key)]
        model_key, model_hash, loading = self._run(
            self._release, keys, [holder, key, _FREED_KEEP, answered, _FREED_KEEP_EACH]
        )
        return LoadedModel(model_key.decode() if model_key else None, bool(model_hash), loading == b"1")

    def wait_for_release(self, timeout_s: float, keys: Sequence[str] | None = None) -> None:
        lists = [self._freed] if keys is None else [self._freed_of(key) for key in keys]
        with self._reaching_redis():
            self._client.blpop(lists, timeout=min(max(timeout_s, 0.01), _LONGEST_WAIT_S))

    def record_success(self, key: str, elapsed_s: float) -> None:
        # The release script's success half: no holder by that name, so no slot is given back.
        self.release(key, "", answered_s=elapsed_s)

    def record_failure(self, key: str, error: str, *, bench: bool, policy: HealthPolicy) -> bool:
        args = [
            error[:500],
            int(bench),
            policy.failure_threshold,
            _ms(policy.cooldown_min_s),
            _ms(policy.cooldown_max_s),
        ]
        return bool(self._run(self._failure, [self._health(key)], args))

    def claim_probes(self, keys: Sequence[str], *, claim_s: float) -> list[str]:
        redis_keys = [k for key in keys for k in (self._health(key), f"{POOL_PREFIX}probe:{key}")]
        claimed = self._run(self._claim, redis_keys, [_ms(claim_s), "1"])
        return [keys[int(i) - 1] for i in claimed]

    def probe_result(self, key: str, *, ok: bool, error: str | None, policy: HealthPolicy) -> None:
        keys = [self._health(key), f"{POOL_PREFIX}probe:{key}", self._freed, self._freed_of(key)]
        args = [
            int(ok),
            (error or "")[:500],
            _ms(policy.cooldown_min_s),
            _ms(policy.cooldown_max_s),
            key,
            _FREED_KEEP,
            _FREED_KEEP_EACH,
        ]
        self._run(self._probe_result, keys, args)

    def status(self, backends: Sequence[Backend]) -> list[BackendStatus]:
        keys = [k for b in backends for k in (self._slots(b.key), self._health(b.key), self._loads(b.key))]
        out = self._run(self._status, keys, [])
        now_ms = int(out[0])
        result = []
        for index, backend in enumerate(backends):
            in_use = int(out[1 + 3 * index])
            health = _decode_hash(out[2 + 3 * index])
            loads = _decode_hash(out[3 + 3 * index])
            benched = health.get("benched") == "1"
            error_ms = health.get("last_error_ms")
            result.append(
                BackendStatus(
                    key=backend.key,
                    max_slots=backend.max_slots,
                    in_use=in_use,
                    healthy=not benched,
                    benched_until=int(health.get("until_ms", now_ms)) / 1000 if benched else None,
                    cooldown_s=int(health.get("cooldown_ms", 0)) / 1000,
                    consecutive_failures=int(health.get("fails", 0)),
                    done=int(health.get("done", 0)),
                    failures=int(health.get("failures", 0)),
                    total_s=float(health.get("total_s", 0.0)),
                    last_error=health.get("last_error"),
                    last_error_at=int(error_ms) / 1000 if error_ms else None,
                    model=health.get("model") or None,
                    model_hash=health.get("model_hash") or None,
                    model_since=int(health["model_ms"]) / 1000 if health.get("model_ms") else None,
                    loading=health.get("loading") == "1",
                    load_s={
                        name[2:]: float(loads.get("s:" + name[2:], 0.0)) / int(count)
                        for name, count in loads.items()
                        if name.startswith("n:") and int(count) > 0
                    },
                    model_loads=int(health.get("model_loads", 0)),
                )
            )
        return result

    def set_model(
        self, key: str, model: str | None, model_hash: str | None, *, loading: bool = False, counts_load: bool = False
    ) -> str | None:
        args = [model or "", model_hash or "", int(loading), int(counts_load), checkpoint_key(model) or ""]
        before = self._run(self._set_model, [self._health(key)], args)
        return before.decode() or None if isinstance(before, bytes) else None

    def record_load(self, key: str, model: str, elapsed_s: float) -> None:
        self._run(self._record_load, [self._health(key), self._loads(key)], [model, repr(float(elapsed_s))])

    def want(self, holder: str, model: str, *, ttl_s: float) -> None:
        self._run(self._want, [self._wants_key], [f"{model}\t{holder}", _ms(ttl_s)])

    def unwant(self, holder: str, model: str) -> None:
        with self._reaching_redis():
            self._client.zrem(self._wants_key, f"{model}\t{holder}")

    def wants(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for member in self._run(self._wants, [self._wants_key], []):
            model = member.decode().rsplit("\t", 1)[0]
            counts[model] = counts.get(model, 0) + 1
        return counts

    @staticmethod
    def _tickets(klass: int) -> str:
        return f"{POOL_PREFIX}tickets:{klass}"

    def ticket(self, job_ids: Sequence[str], klass: int, *, ttl_s: float) -> None:
        for start in range(0, len(job_ids), 1000):
            self._run(self._ticket, [self._tickets(klass)], [_ms(ttl_s), *job_ids[start : start + 1000]])

    def drop_ticket(self, job_id: str, klass: int) -> None:
        with self._reaching_redis():
            self._client.zrem(self._tickets(klass), job_id)

    def outranked(self, klass: int) -> bool:
        if klass <= 0:
            return False
        return bool(self._run(self._outranked, [self._tickets(better) for better in range(klass)], []))

    def ticket_outranked(self, job_id: str, klass: int, *, ttl_s: float, check: int) -> bool:
        if check <= 0:
            self.ticket([job_id], klass, ttl_s=ttl_s)
            return False
        # EVALSHA by hand: a Script run in a pipeline makes redis-py ask SCRIPT EXISTS first (a round trip).
        better = [self._tickets(better) for better in range(check)]
        pipe = self._client.pipeline(transaction=False)
        pipe.evalsha(self._ticket.sha, 1, self._tickets(klass), _ms(ttl_s), job_id)
        pipe.evalsha(self._outranked.sha, len(better), *better)
        with self._reaching_redis():
            replies = pipe.execute(raise_on_error=False)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                # Redis restarted or flushed its scripts: both again, each loading its script
                self.ticket([job_id], klass, ttl_s=ttl_s)
                return self.outranked(check)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return bool(replies[1])

    def close(self) -> None:
        self._client.close()
