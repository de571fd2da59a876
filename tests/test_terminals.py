"""Progress in every terminal, and a suite whose outcome does not depend on the shell.

The first test runs the logging and CLI tests in subprocesses under the environments that
once changed their outcome; the second starts a real pseudo-terminal, as Emacs' shell or an
IDE console would be, and reads what a user of it sees.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOGGING_AND_CLI_TESTS = ["test_logs.py", "test_cli.py", "test_cli_ckpt.py", "test_data_cli.py"]


@pytest.mark.slow
@pytest.mark.parametrize("variable", ["TERM=dumb", "NO_COLOR=1", "COLUMNS=40"])
def test_logging_and_cli_tests_pass_whatever_the_terminal(variable: str) -> None:
    name, _, value = variable.partition("=")
    env = {**os.environ, name: value, "PYTHONPATH": str(ROOT)}
    tests = [str(ROOT / "tests" / f) for f in LOGGING_AND_CLI_TESTS]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout)


# A 12-step loop of 0.1 s per step, progress lines every 0.2 s, then one closing line.
LOOP = """
import time
from invprop import logs
logs.setup_logging()
for _ in logs.track(range(12), "a slow loop", images=lambda _: 4):
    time.sleep(0.1)
print("loop finished", flush=True)
"""
CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_a_pseudo_terminal(term: str) -> list[tuple[float, str]]:
    """Run LOOP with stdout and stderr on a new pseudo-terminal whose TERM is `term`;
    return each chunk the terminal received, with the seconds since start."""
    controller, terminal = pty.openpty()
    env = {
        **os.environ,
        "TERM": term,
        "PYTHONPATH": str(ROOT),
        "INVPROP_PROGRESS_SECONDS": "0.2",
    }
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", LOOP], stdin=terminal, stdout=terminal, stderr=terminal, env=env
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        chunks.append((time.monotonic() - start, data.decode(errors="replace")))
    os.close(controller)
    assert process.wait(timeout=60) == 0, "".join(text for _, text in chunks)
    return chunks


@pytest.mark.slow
def test_a_dumb_pseudo_terminal_shows_progress_lines_while_the_loop_runs() -> None:
    chunks = run_on_a_pseudo_terminal("dumb")
    text = "".join(chunk for _, chunk in chunks)
    assert CODES.search(text) is None, repr(text)  # nothing a dumb terminal cannot show
    lines = text.replace("\r\n", "\n").splitlines()
    progress = [i for i, line in enumerate(lines) if "[progress] a slow loop: " in line]
    assert len(progress) >= 2, text  # steady lines, not one at the end
    assert progress[0] < lines.index("loop finished")
    assert re.search(r"a slow loop: \d+/12 batches \(\d+%\), \d+ images/s", lines[progress[0]])
    # The first line reached the terminal while the loop still ran (1.2 s of steps).
    first = next(t for t, chunk in chunks if "[progress]" in chunk)
    done = next(t for t, chunk in chunks if "loop finished" in chunk)
    assert first < done - 0.3


@pytest.mark.slow
def test_a_capable_pseudo_terminal_shows_the_live_bar() -> None:
    text = "".join(chunk for _, chunk in run_on_a_pseudo_terminal("xterm-256color"))
    assert "\x1b[2K" in text  # the bar, redrawn in place
    assert "a slow loop" in CODES.sub("", text)
    assert "[progress]" not in text  # no timed lines beside it
