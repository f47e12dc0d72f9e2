"""The log rate limiter on a fake clock: bursts pass, the rest are counted and summarised once per interval."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weave_node.core.clock import FakeClock
from weave_node.core.ratelimit import OVERFLOW, LogLimiter, RateLimitedLog, Sample

pytestmark = pytest.mark.unit


def sample(i: int = 0) -> Sample:
    return Sample(logging.WARNING, "<-[%s] refused", (f"10.0.0.{i}:1",))


def test_a_burst_passes_then_messages_are_counted_and_summarised_when_the_interval_ends() -> None:
    lim = LogLimiter(burst=3, interval=60.0)
    assert [lim.admit("k", sample(i), now=float(i)) for i in range(10)] == [True] * 3 + [False] * 7
    assert lim.suppressed == 7 and lim.next_deadline() == 60.0
    assert lim.due(59.9) == []
    (summary,) = lim.due(60.0)
    assert summary.key == "k" and summary.suppressed == 7 and summary.seconds == 60.0
    assert summary.text() == "<-[10.0.0.9:1] refused (suppressed 7 similar messages in the last 60 s)"
    assert lim.due(1000.0) == [] and lim.suppressed == 0 and lim.next_deadline() is None


def test_a_message_after_the_interval_passes_and_leaves_the_old_summary_ready() -> None:
    lim = LogLimiter(burst=1, interval=10.0)
    assert lim.admit("k", sample(1), 0.0) and not lim.admit("k", sample(2), 1.0)
    assert lim.admit("k", sample(3), 10.0)  # a new window
    (summary,) = lim.ready()
    assert summary.suppressed == 1 and summary.last == sample(2)
    assert lim.ready() == []


def test_keys_are_independent() -> None:
    lim = LogLimiter(burst=1, interval=10.0)
    assert lim.admit("a", sample(), 0.0) and lim.admit("b", sample(), 0.0)
    assert not lim.admit("a", sample(), 0.0)
    assert lim.admit("c", sample(), 0.0)


def test_quiet_keys_leave_no_summary_and_are_forgotten() -> None:
    lim = LogLimiter(burst=2, interval=10.0)
    lim.admit("k", sample(), 0.0)
    lim.admit("k", sample(), 1.0)
    assert lim.due(10.0) == [] and lim.next_deadline() is None


def test_more_keys_than_the_table_holds_share_the_overflow_key() -> None:
    lim = LogLimiter(burst=1, interval=10.0, max_keys=2)
    assert lim.admit("a", sample(), 0.0) and lim.admit("b", sample(), 0.0)
    assert lim.admit("c", sample(), 0.0)  # the overflow key's first message
    assert not lim.admit("d", sample(4), 0.0)
    (summary,) = lim.due(10.0)
    assert summary.key == OVERFLOW and "suppressed 1 other messages" in summary.text()
    assert lim.admit("e", sample(), 10.0)  # room again once windows are over


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        LogLimiter(burst=0)


@given(
    times=st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=200),
    burst=st.integers(1, 5),
    interval=st.floats(0.5, 3),
)
def test_every_message_is_either_logged_or_counted_in_exactly_one_summary(
    times: list[float], burst: int, interval: float
) -> None:
    lim = LogLimiter(burst=burst, interval=interval)
    now, passed, summarised = 0.0, 0, 0
    for t in times:
        now += t
        passed += lim.admit("k", sample(), now)
        summarised += sum(s.suppressed for s in lim.ready())
    summarised += sum(s.suppressed for s in lim.due(now + interval))
    assert passed + summarised == len(times)
    # never more than `burst` per window: bounded by windows started (each at least `interval` apart)
    assert passed <= burst * (1 + int(now / interval) + 1)


def test_the_logger_adapter_writes_bursts_and_summaries(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    rlog = RateLimitedLog(logging.getLogger("weave_node.test"), LogLimiter(burst=2, interval=60.0), clock.now)
    with caplog.at_level(logging.INFO, logger="weave_node.test"):
        for i in range(1000):
            rlog.log(logging.WARNING, "refused", "<-[%s] refused: too many handshakes", f"10.0.0.{i % 250}:1")
        assert len(caplog.records) == 2
        assert caplog.records[0].filename == "test_core_ratelimit.py"  # the caller's line, not the adapter's
        rlog.flush()
        assert len(caplog.records) == 2 and rlog.next_deadline() == 60.0
        clock.advance(60.0)
        rlog.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1] == (
        "<-[10.0.0.249:1] refused: too many handshakes (suppressed 998 similar messages in the last 60 s)"
    )
    assert caplog.records[-1].levelno == logging.WARNING


def test_the_adapter_counts_nothing_below_the_logger_level(caplog: pytest.LogCaptureFixture) -> None:
    limiter = LogLimiter(burst=1)
    rlog = RateLimitedLog(logging.getLogger("weave_node.test2"), limiter, FakeClock().now)
    with caplog.at_level(logging.WARNING, logger="weave_node.test2"):
        for _ in range(5):
            rlog.log(logging.DEBUG, "k", "noise")
    assert limiter.suppressed == 0 and not caplog.records
