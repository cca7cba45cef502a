import threading
import time

import pytest

from msapp.moysklad.limiter import Limiter, RateLimited, TokenBucket


def test_no_more_than_five_in_flight_under_eight_threads():
    limiter = Limiter(phone_limit=10_000, max_in_flight=5)
    lock = threading.Lock()
    current = peak = done = 0

    def work():
        nonlocal current, peak, done
        for _ in range(10):
            with limiter.slot("0367", "phone", max_wait=30):
                with lock:
                    current += 1
                    peak = max(peak, current)
                time.sleep(0.005)
                with lock:
                    current -= 1
                    done += 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert done == 80 and peak == 5


def test_phone_bucket_stays_under_100_per_5_seconds_with_8_threads():
    limiter = Limiter(phone_limit=100)
    stamps, lock = [], threading.Lock()
    stop = time.monotonic() + 2.5

    def work():
        while time.monotonic() < stop:
            try:
                with limiter.slot("0367", "phone", max_wait=0.5):
                    with lock:
                        stamps.append(time.monotonic())
            except RateLimited:
                pass

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # any 5 s window (the run is 2.5 s) holds at most capacity + rate*5 = 20 + 14*5 = 90 < 100
    assert 20 <= len(stamps) <= 90
    bucket = TokenBucket(100, 5.0)
    assert bucket.capacity + bucket.rate * 5 <= 100


def test_json_budget_is_configurable():
    bucket = TokenBucket(15, 3.0)
    assert bucket.capacity + bucket.rate * 3 <= 15


def test_enterprises_do_not_share_limits():
    limiter = Limiter(phone_limit=5, max_in_flight=1)
    with limiter.slot("a", "phone"):
        with limiter.slot("b", "phone", max_wait=0.01):
            pass  # b is not held up by a's slot
        with pytest.raises(RateLimited):
            with limiter.slot("a", "phone", max_wait=0.05):
                pass


def test_rate_limited_says_when_to_come_back():
    limiter = Limiter(json_budget=5)
    with pytest.raises(RateLimited) as info:
        for _ in range(10):
            with limiter.slot("x", "json", max_wait=0):
                pass
    assert 0 < info.value.after < 5
