"""The shared limiter's reservations (worker/ratelimit.py): each request is given its own send
time, the N-th latest + window + margin, spaced from the one before; the caller sleeps to it;
a caller that gets there late gives its time back and reserves again."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import redis

from config import Rate
from worker.errors import Throttled
from worker.ratelimit import (
    SPACING_FRACTION,
    WIDEN_MAX_MS,
    WIDEN_MEMORY_SECONDS,
    WIDEN_STEP_MS,
    SharedRateLimiter,
)


class Clock:
    """A sleep that only records (or, with ``advance``, also lets real time pass)."""

    def __init__(self, advance: bool = False) -> None:
        self.slept: list[float] = []
        self.advance = advance

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.advance:
            time.sleep(seconds)


def _log(client: redis.Redis, prefix: str, service: str) -> list[float]:
    return [score for _, score in client.zrange(f"{prefix}rate:{service}", 0, -1, withscores=True)]


def test_a_full_window_reserves_the_next_free_time_and_sleeps_to_it(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    clock = Clock()
    limiter = SharedRateLimiter(redis_client, key_prefix, margin=0.05, sleep=clock)
    rate = Rate(2, 1)
    assert limiter.try_acquire("datafast", rate) == 0.0
    assert limiter.try_acquire("datafast", rate) == 0.0
    limiter.acquire("datafast", rate, max_wait=5)
    # The free time (1.05 s away) is beyond the reserve-ahead (half the window): polls first,
    # then one sleep straight to the reserved time, window + margin after the first grant.
    *polls, last = clock.slept
    assert polls and all(p <= 0.56 for p in polls)
    assert 0.4 < last <= 0.5
    first, _, third = _log(redis_client, key_prefix, "datafast")
    assert third - first == pytest.approx(1050, abs=2)


def _sends(limiter: SharedRateLimiter, rate: Rate, threads: int, each: int) -> list[float]:
    """When ``threads`` threads, each acquiring ``each`` times, were let go (time.time())."""
    sent: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(each):
            limiter.acquire("datafast", rate, max_wait=20)
            with lock:
                sent.append(time.time())

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sorted(sent)


def test_sends_never_put_n_plus_one_in_a_window_and_are_spaced(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    limiter = SharedRateLimiter(redis_client, key_prefix, margin=0.04)
    rate = Rate(4, 1)
    sent = _sends(limiter, rate, threads=6, each=2)
    assert len(sent) == 12
    # Any N+1 consecutive sends span more than the window (the margin absorbs the jitter of
    # a loaded machine between the reserved time and the send).
    assert min(sent[i + 4] - sent[i] for i in range(len(sent) - 4)) > 1.0
    # Three windows' worth, not much more: the limit, not the limiter, set the pace.
    assert sent[-1] - sent[0] < 2 * (1 + limiter.margin) + 0.5
    # Spaced: never reserved for the same instant (a little jitter allowed).
    spacing = 1 / 4 * SPACING_FRACTION
    assert min(b - a for a, b in itertools.pairwise(sent)) >= spacing * 0.5


def test_a_caller_that_cannot_wait_is_not_held_by_the_spacing(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    limiter = SharedRateLimiter(redis_client, key_prefix)
    rate = Rate(3, 10)
    for _ in range(3):
        limiter.acquire("hubspot", rate, max_wait=0)
    with pytest.raises(Throttled) as caught:
        limiter.acquire("hubspot", rate, max_wait=0)
    assert 9 < caught.value.retry_after <= 10 + limiter.margin


def test_a_time_further_than_the_reserve_ahead_is_polled_not_reserved(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """Far back in the queue a caller does not hold a time yet, so a provider pause that
    starts meanwhile still holds it."""
    limiter = SharedRateLimiter(redis_client, key_prefix, sleep=Clock())
    rate = Rate(1, 5)
    limiter.acquire("slack", rate, max_wait=0)
    with pytest.raises(Throttled):
        limiter.acquire("slack", rate, max_wait=2)
    assert len(_log(redis_client, key_prefix, "slack")) == 1


def test_a_late_caller_sends_at_the_time_it_is_ready(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """A thread that wakes well after its reserved time would send into the window of the
    requests reserved after it: its reservation moves to when it is ready."""
    overslept: list[float] = []

    def late_sleep(seconds: float) -> None:
        # The first sleep overshoots by 0.2 s (a starved thread); later ones are on time.
        extra = 0.2 if not overslept else 0.0
        overslept.append(seconds)
        time.sleep(seconds + extra)

    limiter = SharedRateLimiter(redis_client, key_prefix, margin=0.04, sleep=late_sleep)
    rate = Rate(2, 1)
    limiter.try_acquire("datafast", rate)
    limiter.try_acquire("datafast", rate)
    first = _log(redis_client, key_prefix, "datafast")[0]
    time.sleep(0.6)  # the next free time is now within the reserve-ahead: reserved, slept to
    limiter.acquire("datafast", rate, max_wait=5)
    # Reserved for 1.04 s after the first, sent 0.2 s later: the log says when it was sent.
    assert overslept and 0.3 < overslept[0] < 0.5
    times = _log(redis_client, key_prefix, "datafast")
    assert len(times) == 3 and times[2] - first >= 1200


def test_a_late_time_moves_only_when_no_window_overfills(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    limiter = SharedRateLimiter(redis_client, key_prefix, margin=0.04)
    rate = Rate(2, 1)
    key = f"{key_prefix}rate:datafast"
    seconds, micros = redis_client.time()
    now = seconds * 1000 + micros // 1000
    start = now - 60  # "ours" was due 50 ms ago
    # x, ours, then y (N = 2 after x) and z (N = 2 after ours), as other workers reserved them.
    redis_client.zadd(key, {"x": start, "ours": start + 10, "y": start + 1040, "z": start + 1050})
    # Moving ours to now would put ours, y and z within one window ending at z.
    assert not limiter._moved("datafast", rate, "ours")
    assert redis_client.zscore(key, "ours") == start + 10
    # Without z (nobody depends on ours yet) it moves.
    redis_client.zrem(key, "z")
    assert limiter._moved("datafast", rate, "ours")
    assert float(redis_client.zscore(key, "ours") or 0) >= now


def test_reservations_from_two_processes_keep_the_limit(redis_server: str, key_prefix: str) -> None:
    """Two limiters (two Redis clients, as two worker processes would have), three threads
    each."""
    clients = [redis.Redis.from_url(redis_server) for _ in range(2)]
    try:
        limiters = [SharedRateLimiter(c, key_prefix, margin=0.04) for c in clients]
        rate = Rate(3, 1)
        results: list[list[float]] = [[], []]
        runners = [
            threading.Thread(target=lambda i=i: results[i].extend(_sends(limiters[i], rate, 3, 2)))
            for i in range(2)
        ]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
        sent = sorted(results[0] + results[1])
        assert len(sent) == 12
        assert min(sent[i + 3] - sent[i] for i in range(len(sent) - 3)) > 1.0
    finally:
        for client in clients:
            client.close()


def test_a_request_written_out_late_moves_its_time(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """Told when the request really left (the HTTP client's trace hook), the limiter moves a
    late one's time, so the requests reserved after it keep their distance."""
    limiter = SharedRateLimiter(redis_client, key_prefix, margin=0.04)
    rate = Rate(5, 1)
    grant = limiter.reserve("datafast", rate, max_wait=1)
    (reserved,) = _log(redis_client, key_prefix, "datafast")
    assert not limiter.left_late(grant, grant.at + 0.005)  # within the late limit
    assert _log(redis_client, key_prefix, "datafast") == [reserved]
    assert limiter.left_late(grant, grant.at + 0.1)
    assert _log(redis_client, key_prefix, "datafast") == [reserved + 100]


def test_a_429_widens_the_margin_for_every_worker_up_to_a_cap(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    clock = Clock()
    limiter = SharedRateLimiter(redis_client, key_prefix, margin=0.05, sleep=clock)
    other = SharedRateLimiter(redis_client, key_prefix, margin=0.05, sleep=clock)
    assert limiter.widen("datafast") == WIDEN_STEP_MS / 1000
    assert other.widen("datafast") == 2 * WIDEN_STEP_MS / 1000  # shared: each 429 doubles it
    widened = [limiter.widen("datafast") for _ in range(6)][-1]
    assert widened == WIDEN_MAX_MS / 1000
    ttl = redis_client.pttl(f"{key_prefix}margin:datafast")
    assert WIDEN_MEMORY_SECONDS * 1000 - 5000 < ttl <= WIDEN_MEMORY_SECONDS * 1000
    assert other.added_margin("hubspot") == 0  # per service

    # The N+1-th send is reserved window + margin + the added margin after the first.
    rate = Rate(2, 1)
    for _ in range(3):
        other.acquire("datafast", rate, max_wait=5)
    first, _, third = _log(redis_client, key_prefix, "datafast")
    assert third - first == pytest.approx(1000 + 50 + WIDEN_MAX_MS, abs=2)

    # Forgotten once it expires: back to window + margin.
    redis_client.delete(f"{key_prefix}margin:datafast", f"{key_prefix}rate:datafast")
    for _ in range(3):
        other.acquire("datafast", rate, max_wait=5)
    first, _, third = _log(redis_client, key_prefix, "datafast")
    assert third - first == pytest.approx(1050, abs=2)
