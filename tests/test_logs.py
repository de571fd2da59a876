"""The one logging and progress facility: a bar on a terminal, sparse plain lines in a log."""

from __future__ import annotations

import io
import logging
import re

import pytest

from invprop import logs
from invprop.errors import InvpropError

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
    logs.setup_logging(stream=stream, mode="lines", interval=10)
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
    logs.setup_logging(stream=stream, mode="lines", interval=10)
    with logs.progress("kNN", total=5) as shown:
        for _ in range(5):
            clock.now += 1
            shown.advance()
    assert stream.getvalue() == ""  # 5 s of work: under one interval, no line


def test_terminal_mode_draws_a_bar_with_rate_and_eta_and_logs_above_it() -> None:
    stream = io.StringIO()
    logs.setup_logging(stream=stream, mode="bar", interval=10)
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
    logs.setup_logging(-1, stream=stream, mode="lines")
    log.info("hidden")
    log.warning("shown")
    logs.setup_logging(1, stream=stream, mode="lines")
    log.debug("detail")
    monkeypatch.setenv("RANK", "1")  # a torchrun worker other than rank 0 stays quiet
    logs.setup_logging(0, stream=stream, mode="lines")
    log.info("from rank 1")
    lines = [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]
    assert lines == ["[graph] warning: shown", "[graph] detail"]
    assert logging.getLogger("invprop").propagate is False


def test_plain_lines_follow_sys_stderr_even_after_a_closed_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pytest and CliRunner swap sys.stderr and close the old one: logging keeps working."""
    logs.setup_logging(mode="lines")
    log = logs.get_logger("embed")
    first, second = io.TextIOWrapper(io.BytesIO()), io.StringIO()  # flush() once closed raises
    monkeypatch.setattr("sys.stderr", first)
    log.info("one")
    first.close()
    monkeypatch.setattr("sys.stderr", second)
    log.info("two")
    assert second.getvalue().endswith("[embed] two\n")


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("tty", "environ", "expected"),
    [
        (True, {"TERM": "xterm-256color"}, "bar"),
        (True, {"TERM": "screen"}, "bar"),
        (True, {"TERM": "dumb"}, "lines"),  # Emacs' shell, some IDE consoles
        (True, {"TERM": "unknown"}, "lines"),
        (True, {}, "lines"),  # no TERM: no known capabilities
        (False, {"TERM": "xterm-256color"}, "lines"),  # a file or a pipe
        (True, {"TERM": "xterm", "NO_COLOR": "1"}, "bar"),  # colours off, not the bar
        (True, {"TERM": "xterm", "INVPROP_PROGRESS": "lines"}, "lines"),
        (True, {"TERM": "xterm", "INVPROP_PROGRESS": "off"}, "off"),
        (False, {"INVPROP_PROGRESS": "bar"}, "bar"),
        (True, {"TERM": "dumb", "INVPROP_PROGRESS": " Bar "}, "bar"),
        (True, {"TERM": "xterm", "INVPROP_PROGRESS": ""}, "bar"),  # empty: unset
    ],
)
def test_progress_mode_by_terminal_and_override(
    tty: bool, environ: dict[str, str], expected: str
) -> None:
    stream = FakeTty() if tty else io.StringIO()
    assert logs.progress_mode(stream, environ) == expected


def test_a_bad_override_names_the_allowed_values() -> None:
    with pytest.raises(
        InvpropError, match=r"INVPROP_PROGRESS='fancy' is not one of bar, lines, off"
    ):
        logs.progress_mode(io.StringIO(), {"INVPROP_PROGRESS": "fancy"})


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_interval_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("INVPROP_PROGRESS_SECONDS", value)
    with pytest.raises(InvpropError, match=r"INVPROP_PROGRESS_SECONDS=.* is not a number"):
        logs.setup_logging(stream=io.StringIO())


def test_entry_points_print_a_bad_override_as_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from invprop.cli import app
    from invprop.pipeline import main

    monkeypatch.setenv("INVPROP_PROGRESS", "fancy")
    result = CliRunner().invoke(app, ["params", "show"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: INVPROP_PROGRESS='fancy' is not one of bar, lines, off; set one of them, or "
        "unset it to choose by terminal"
    ]
    assert main("report", []) == 2


def test_a_requested_bar_draws_even_under_a_dumb_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich alone would skip every redraw under TERM=dumb: asked for, the bar is drawn."""
    monkeypatch.setenv("TERM", "dumb")
    stream = FakeTty()
    logs.setup_logging(stream=stream, mode="bar")
    for _ in logs.track(range(2), "embedding the test split"):
        pass
    assert "\x1b[" in stream.getvalue()
    assert "embedding the test split" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())


def _sgr_colours(text: str) -> set[int]:
    """The colour numbers of the SGR codes in `text` (30-38, 40-48, 90-107)."""
    numbers = {
        int(n) for codes in re.findall(r"\x1b\[([0-9;]*)m", text) for n in codes.split(";") if n
    }
    return {n for n in numbers if 30 <= n <= 48 or 90 <= n <= 107}


def test_no_color_keeps_the_bar_and_drops_its_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    def drawn() -> str:
        stream = io.StringIO()
        logs.setup_logging(stream=stream, mode="bar")
        log = logs.get_logger("embed")
        for step in logs.track(range(3), "embedding", images=lambda _: 8):
            if step == 1:
                log.warning("halfway")
        return stream.getvalue()

    assert _sgr_colours(drawn())  # the check sees colours where there are some
    monkeypatch.setenv("NO_COLOR", "1")
    text = drawn()
    assert "\x1b[2K" in text  # still redrawn in place
    assert _sgr_colours(text) == set()


def test_off_shows_no_progress_but_keeps_the_log(clock: FakeClock) -> None:
    stream = io.StringIO()
    logs.setup_logging(stream=stream, mode="off", interval=1)
    log = logs.get_logger("graph")
    for _ in logs.track(range(10), "searching", logger=log):
        clock.now += 5
    log.info("done")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("[graph] done")
