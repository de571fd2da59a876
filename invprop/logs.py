"""One logging and progress facility for the stages, the CLI and the library.

- `setup_logging(verbosity)` configures the "invprop" logger once per process: on a
  terminal that can redraw, Rich's handler (time column, levels in colour); elsewhere
  (DVC, Snakemake and SLURM log files, pipes, `TERM=dumb`) plain
  `YYYY-mm-dd HH:MM:SS [stage] message` lines. Verbosity -1 shows warnings only (--quiet),
  0 information, 1 debug (--verbose). Under torchrun only rank 0 speaks, so one log reads
  like one process.
- `track(iterable, description, total)` shows progress in one of three modes
  (`progress_mode`): a rich.progress bar (steps, images/s, ETA) where the terminal can
  redraw; plain lines at most every `interval` seconds where it cannot, so a log file or a
  dumb terminal shows steady progress without flooding; or nothing. `INVPROP_PROGRESS=
  bar|lines|off` overrides the choice. Every loop over batches and over anchors goes
  through it.

Nothing here changes what a stage computes, only what it says while computing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any, Literal, TypeVar, get_args

from invprop.errors import InvpropError

T = TypeVar("T")

ROOT = "invprop"
# Seconds between two plain progress lines; INVPROP_PROGRESS_SECONDS overrides.
DEFAULT_INTERVAL = 10.0
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

ProgressMode = Literal["bar", "lines", "off"]
PROGRESS_MODES: tuple[str, ...] = get_args(ProgressMode)
PROGRESS_ENV = "INVPROP_PROGRESS"
# TERM values of terminals that cannot move the cursor, so a live bar would draw nothing
# (Rich then skips every redraw); no TERM at all says nothing about the capabilities either.
DUMB_TERMS = frozenset({"", "dumb", "unknown"})


def can_redraw(stream: IO[str], environ: Mapping[str, str] = os.environ) -> bool:
    """Whether `stream` is a terminal that can redraw a live bar: a tty whose TERM names
    a terminal with cursor movement."""
    try:
        tty = bool(getattr(stream, "isatty", lambda: False)())
    except ValueError:  # a closed stream (pytest swaps stderr and closes the old one)
        return False
    return tty and environ.get("TERM", "").strip().lower() not in DUMB_TERMS


def progress_mode(stream: IO[str], environ: Mapping[str, str] = os.environ) -> ProgressMode:
    """How progress is shown on `stream`: INVPROP_PROGRESS when set, else a live "bar"
    where the terminal can redraw and timed plain "lines" everywhere else."""
    chosen = environ.get(PROGRESS_ENV, "").strip().lower()
    if chosen:
        if chosen not in PROGRESS_MODES:
            raise InvpropError(
                f"{PROGRESS_ENV}={environ[PROGRESS_ENV]!r} is not one of "
                f"{', '.join(PROGRESS_MODES)}; set one of them, or unset it to choose by terminal"
            )
        return chosen  # type: ignore[return-value]
    return "bar" if can_redraw(stream, environ) else "lines"


@dataclass
class _Settings:
    stream: IO[str] | None = None  # None: sys.stderr at the time of writing
    mode: ProgressMode = "lines"
    interval: float = DEFAULT_INTERVAL
    enabled: bool = True  # progress shown at all (not for --quiet, ranks > 0, mode "off")
    console: Any = None  # the rich Console that handler and bars share
    live: Any = None  # the running rich.progress.Progress, while a bar is shown
    bars: int = 0

    def out(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stderr

    def rich_console(self) -> Any:
        if self.console is None:
            from rich.console import Console

            class RedrawingConsole(Console):
                """Rich refuses to redraw under TERM=dumb even when told it is a terminal;
                the mode already decided (or the user asked for the bar)."""

                @property
                def is_dumb_terminal(self) -> bool:
                    return False

            # stderr=True without a stream: Rich looks sys.stderr up at each write. NO_COLOR
            # is Rich's own: the bar and the log keep their layout, without colours.
            self.console = RedrawingConsole(
                file=self.stream, stderr=self.stream is None, force_terminal=True
            )
        return self.console


_settings = _Settings()


def get_logger(name: str) -> logging.Logger:
    """The logger of one stage or module; its records print as `[name] message`."""
    return logging.getLogger(f"{ROOT}.{name}")


class _PlainFormatter(logging.Formatter):
    """`2026-11-29 17:30:01 [pretrain] message`; WARNING and above say so."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name.removeprefix(f"{ROOT}.")
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        stamp = time.strftime(DATE_FORMAT, time.localtime(record.created))
        return f"{stamp} [{name}] {level}{record.getMessage()}"


class _RichFormatter(logging.Formatter):
    """The message with its stage; Rich's handler adds time and level columns."""

    def format(self, record: logging.LogRecord) -> str:
        return f"[{record.name.removeprefix(f'{ROOT}.')}] {record.getMessage()}"


class _PlainHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the configured stream, or to sys.stderr as it is at each record (pytest
    and CliRunner swap it), so a set-up never writes to a stream closed since."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = _settings.out()  # not setStream(), which flushes the old, closed one
        super().emit(record)


def launch_rank() -> int:
    """This process's place among the processes of one run: torchrun's RANK, else
    SLURM_PROCID (the per-node tasks of a multi-node launch), else 0. Read from the
    environment, so this module stays free of torch."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def _interval_from_env() -> float:
    value = os.environ.get("INVPROP_PROGRESS_SECONDS", "")
    if not value.strip():
        return DEFAULT_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise InvpropError(
            f"INVPROP_PROGRESS_SECONDS={value!r} is not a number of seconds >= 0; "
            f"unset it for the default {DEFAULT_INTERVAL:g}"
        )
    return seconds


def setup_logging(
    verbosity: int = 0,
    stream: IO[str] | None = None,
    mode: ProgressMode | None = None,
    interval: float | None = None,
) -> None:
    """Configure the "invprop" logger and the progress display for this process.

    verbosity: -1 warnings only, 0 info, 1 debug. stream: where to write (stderr by
    default); mode: "bar", "lines" or "off" (default `progress_mode(stream)`); interval:
    seconds between plain progress lines (default INVPROP_PROGRESS_SECONDS, else 10).
    Calling it again replaces the previous set-up. A bad INVPROP_PROGRESS or
    INVPROP_PROGRESS_SECONDS raises InvpropError naming what is allowed.
    """
    global _settings
    if interval is None:
        interval = _interval_from_env()
    out = stream if stream is not None else sys.stderr
    if mode is None:
        mode = progress_mode(out)
    quiet = verbosity < 0 or launch_rank() != 0
    _settings = _Settings(stream, mode, interval, enabled=not quiet and mode != "off")
    logger = logging.getLogger(ROOT)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler: logging.Handler
    if mode == "bar":  # records above the bar, on the console it redraws
        from rich.logging import RichHandler

        handler = RichHandler(
            console=_settings.rich_console(),
            show_path=False,
            omit_repeated_times=False,
            log_time_format="[%X]",
        )
        handler.setFormatter(_RichFormatter())
    else:
        handler = _PlainHandler()
        handler.setFormatter(_PlainFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbosity > 0 else logging.INFO)
    logger.propagate = False


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class Progress:
    """One task's progress: `advance(steps, images)` after each step of work."""

    def __init__(
        self, description: str, total: int | None, unit: str, logger: logging.Logger
    ) -> None:
        self.description, self.total, self.unit, self.logger = description, total, unit, logger
        self.steps = 0
        self.images = 0
        self.start = time.monotonic()
        self._last_line = self.start
        self._task: Any = None

    def rate(self) -> float | None:
        """Images per second so far (None before the first image or second)."""
        elapsed = time.monotonic() - self.start
        return self.images / elapsed if self.images and elapsed > 0 else None

    def line(self) -> str:
        """The plain progress line: `epoch 3: 120/469 batches (26%), 1234 images/s, ...`."""
        elapsed = time.monotonic() - self.start
        parts = [f"{self.description}: {self.steps}"]
        if self.total:
            parts[0] += f"/{self.total} {self.unit} ({100 * self.steps / self.total:.0f}%)"
        else:
            parts[0] += f" {self.unit}"
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:,.0f} images/s")
        parts.append(f"{_duration(elapsed)} elapsed")
        if self.total and 0 < self.steps < self.total:
            parts.append(f"ETA {_duration(elapsed * (self.total - self.steps) / self.steps)}")
        return ", ".join(parts)

    def advance(self, steps: int = 1, images: int = 0) -> None:
        self.steps += steps
        self.images += images
        if self._task is not None:
            _settings.live.update(self._task, advance=steps, images=self.images)
            return
        now = time.monotonic()
        if _settings.enabled and now - self._last_line >= _settings.interval:
            self._last_line = now
            self.logger.info(self.line())

    def _open(self) -> None:
        if not (_settings.enabled and _settings.mode == "bar"):
            return
        if _settings.live is None:
            _settings.live = _rich_progress(_settings.rich_console())
            _settings.live.start()
        _settings.bars += 1
        self._task = _settings.live.add_task(
            self.description, total=self.total, images=0, unit=self.unit
        )
        _settings.live.refresh()  # drawn at once, not at the next tick

    def _close(self) -> None:
        if self._task is None:
            return
        _settings.live.remove_task(self._task)
        self._task = None
        _settings.bars -= 1
        if _settings.bars == 0:
            _settings.live.stop()
            _settings.live = None


def _rich_progress(console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class ImagesPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            images, elapsed = task.fields.get("images", 0), task.elapsed
            if not images or not elapsed:
                return Text("")
            return Text(f"{images / elapsed:,.0f} images/s", style="progress.data.speed")

    return RichProgress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        ImagesPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@contextmanager
def progress(
    description: str,
    total: int | None = None,
    unit: str = "batches",
    logger: logging.Logger | None = None,
) -> Iterator[Progress]:
    """A progress display for work that is not one loop: call `.advance(steps, images)`.

    total: steps expected (None: unknown); logger: where plain lines go (default
    "invprop.progress"). The bar disappears when the block ends, normally or not.
    """
    task = Progress(description, total, unit, logger or get_logger("progress"))
    task._open()
    try:
        yield task
    finally:
        task._close()


def track(
    iterable: Iterable[T],
    description: str,
    total: int | None = None,
    unit: str = "batches",
    images: Callable[[T], int] | None = None,
    logger: logging.Logger | None = None,
) -> Iterator[T]:
    """Yield the items of `iterable`, showing progress: one step per item.

    total: steps expected (default len(iterable) when it has one); images(item): images
    (or anchors, queries) the item holds, for the rate. See `progress` for the rest.
    """
    if total is None and isinstance(iterable, Sized):
        total = len(iterable)
    with progress(description, total, unit, logger) as task:
        for item in iterable:
            yield item
            task.advance(1, images(item) if images is not None else 0)
