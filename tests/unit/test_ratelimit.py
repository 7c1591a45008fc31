import pytest

from shared.domain.ratelimit import (
    UNKNOWN_ADDRESS,
    RateLimiter,
    client_address,
    window_allowance,
)


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


def test_peek_answers_as_take_would_without_taking() -> None:
    rl = RateLimiter(rate=1, burst=2)
    assert rl.peek("a", 0.0) is None and "a" not in rl.buckets
    rl.take("a", 0.0)
    assert rl.peek("a", 0.0) is None
    rl.take("a", 0.0)
    assert rl.peek("a", 0.0) == 1.0
    assert rl.peek("a", 0.0) == 1.0  # peeking took nothing
    assert rl.peek("a", 1.0) is None


@pytest.mark.parametrize(
    ("header", "hops", "address"),
    [
        ("203.0.113.7:51234", 1, "203.0.113.7"),  # the Functions front end: ip:port
        ("203.0.113.7", 1, "203.0.113.7"),
        # entries left of the trusted ones are the client's own say: ignored
        ("1.1.1.1, 203.0.113.7:51234", 1, "203.0.113.7"),
        ("6.6.6.6, 203.0.113.7, 10.0.0.4:443", 2, "203.0.113.7"),  # APIM in front
        ("203.0.113.7", 3, "203.0.113.7"),  # fewer entries than hops: the leftmost
        ("[2001:db8:1:2:3:4:5:6]:443", 1, "2001:db8:1:2::/64"),
        ("2001:db8:1:2::9", 1, "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", 1, "203.0.113.7"),
        ("", 1, UNKNOWN_ADDRESS),
        (None, 1, UNKNOWN_ADDRESS),
        ("1.2.3.4, not-an-address", 1, UNKNOWN_ADDRESS),
    ],
)
def test_client_address_trusts_only_the_proxies_entries(
    header: str | None, hops: int, address: str
) -> None:
    assert client_address(header, hops) == address


def test_window_allowance_is_what_one_bucket_lets_through() -> None:
    assert window_allowance(rate=1, burst=20, window_s=60) == 80
    assert window_allowance(rate=0.5, burst=1, window_s=3) == 2
