from shared.domain.ratelimit import RateLimiter


def test_burst_then_refill_at_rate() -> None:
    rl = RateLimiter(rate=10, burst=5)
    assert [rl.take("a", 0.0) for _ in range(5)] == [None] * 5
    wait = rl.take("a", 0.0)
    assert wait is not None and abs(wait - 0.1) < 1e-9
    assert rl.take("b", 0.0) is None  # another caller has its own bucket
    assert rl.take("a", 0.1) is None  # one token back after 1/rate seconds
    assert rl.take("a", 0.1) is not None


def test_idle_buckets_are_forgotten_when_full() -> None:
    rl = RateLimiter(rate=1, burst=2, max_keys=2)
    rl.take("a", 0.0)
    rl.take("b", 0.0)
    rl.take("c", 10.0)
    assert set(rl.buckets) == {"c"}
