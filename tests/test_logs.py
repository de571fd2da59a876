"""The one logging and progress facility: a bar on a terminal, sparse plain lines in a log."""

from __future__ import annotations

import io
import logging
import re

import pytest

from invprop import logs

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


class FakeClock:
    """time.monotonic for the progress helper: advanced by the test, one second per step."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(logs.time, "monotonic", fake)
    return fake


@pytest.fixture(autouse=True)
def _reset_logging():
    yield
    logs.setup_logging()  # back to stderr, as every other test expects


def test_plain_mode_prints_a_line_at_most_every_interval(clock: FakeClock) -> None:
    stream = io.StringIO()
    logs.setup_logging(stream=stream, terminal=False, interval=10)
    log = logs.get_logger("pretrain")
    for _ in logs.track(range(100), "epoch 1/4", images=lambda _: 32, logger=log):
        clock.now += 1  # one second of work per batch
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # after 10, 20, ..., 100 seconds: not one per batch
    first = re.fullmatch(rf"{STAMP} \[pretrain\] (.*)", lines[0])
    assert first is not None, lines[0]
    assert first.group(1) == (
        "epoch 1/4: 10/100 batches (10%), 32 images/s, 0:00:10 elapsed, ETA 0:01:30"
    )
    assert lines[-1].endswith("100/100 batches (100%), 32 images/s, 0:01:40 elapsed")
    assert "\x1b[" not in stream.getvalue()  # no terminal codes in a log file


def test_plain_mode_is_silent_for_short_work(clock: FakeClock) -> None:
    stream = io.StringIO()
    logs.setup_logging(stream=stream, terminal=False, interval=10)
    with logs.progress("kNN", total=5) as shown:
        for _ in range(5):
            clock.now += 1
            shown.advance()
    assert stream.getvalue() == ""  # 5 s of work: under one interval, no line


def test_terminal_mode_draws_a_bar_with_rate_and_eta_and_logs_above_it() -> None:
    stream = io.StringIO()
    logs.setup_logging(stream=stream, terminal=True, interval=10)
    log = logs.get_logger("embed")
    for step in logs.track(range(3), "embedding the train split", images=lambda _: 512):
        if step == 1:
            log.info("halfway")
    text = stream.getvalue()
    assert "\x1b[" in text  # drawn with terminal codes
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "embedding the train split" in text and "batches" in text and "ETA" in text
    assert "[embed] halfway" in text
    assert logs._settings.live is None  # the bar is gone once the loop ends


def test_verbosity_and_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    log = logs.get_logger("graph")
    logs.setup_logging(-1, stream=stream, terminal=False)
    log.info("hidden")
    log.warning("shown")
    logs.setup_logging(1, stream=stream, terminal=False)
    log.debug("detail")
    monkeypatch.setenv("RANK", "1")  # a torchrun worker other than rank 0 stays quiet
    logs.setup_logging(0, stream=stream, terminal=False)
    log.info("from rank 1")
    lines = [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]
    assert lines == ["[graph] warning: shown", "[graph] detail"]
    assert logging.getLogger("invprop").propagate is False


def test_plain_lines_follow_sys_stderr_even_after_a_closed_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pytest and CliRunner swap sys.stderr and close the old one: logging keeps working."""
    logs.setup_logging(terminal=False)
    log = logs.get_logger("embed")
    first, second = io.TextIOWrapper(io.BytesIO()), io.StringIO()  # flush() once closed raises
    monkeypatch.setattr("sys.stderr", first)
    log.info("one")
    first.close()
    monkeypatch.setattr("sys.stderr", second)
    log.info("two")
    assert second.getvalue().endswith("[embed] two\n")
