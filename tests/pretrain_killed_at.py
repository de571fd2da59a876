"""Run stages/pretrain.py and SIGKILL it at an exact point, or hold it there to be killed
from outside (test-only, for tests/test_train.py and tests/test_slurm.py).

    python tests/pretrain_killed_at.py step N [ARGS]             # inside the N-th step
    python tests/pretrain_killed_at.py save NAME FRACTION [ARGS]  # inside the write of NAME
    python tests/pretrain_killed_at.py hold EPOCH MARKER [ARGS]   # after last.pt of EPOCH

`step N`: right after the N-th optimizer step of this process, before the step refreshes
the memory bank, so the model and bank in memory are half-way through a step.
`save NAME FRACTION`: in the first save_checkpoint of a file called NAME, once FRACTION
of the checkpoint's bytes are in the temporary file and before it is renamed into place.
`hold EPOCH MARKER`: once last.pt of epoch EPOCH is written, write this process's pid to
the file MARKER and wait to be killed (scancel, a SLURM time limit); with MARKER already
there, the run is left alone, so a retry trains to the end.
The process kills itself (or waits), so the point is exact and no timing is involved; if
the point is never reached the stage finishes normally (exit 0), which the caller treats
as a failure. ARGS go to the stage (e.g. --params FILE).
"""

from __future__ import annotations

import io
import os
import runpy
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

STAGE = Path(__file__).resolve().parents[1] / "stages" / "pretrain.py"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_step(n: int) -> None:
    real_step = torch.optim.SGD.step
    calls = 0

    def step(self: torch.optim.SGD, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        result = real_step(self, *args, **kwargs)
        calls += 1
        if calls == n:
            die()
        return result

    torch.optim.SGD.step = step


def kill_in_save(name: str, fraction: float) -> None:
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        # save_checkpoint hands torch.save the open temporary file `.NAME.tmp-...`.
        if not Path(getattr(f, "name", "")).name.startswith(f".{name}.tmp-"):
            real_save(obj, f, *args, **kwargs)
            return
        whole = io.BytesIO()
        real_save(obj, whole, *args, **kwargs)
        data = whole.getvalue()
        f.write(data[: int(len(data) * fraction)])
        f.flush()  # the partial bytes reach the file, as a write cut short would leave them
        die()

    torch.save = save


def hold_after(epoch: int, marker: Path) -> None:
    if marker.exists():
        return
    import invprop.training

    real_save = invprop.training.save_checkpoint

    def save(path: str | Path, state: dict[str, Any]) -> None:
        real_save(path, state)
        if Path(path).name == "last.pt" and state["epoch"] == epoch:
            written = marker.with_name(marker.name + ".tmp")
            written.write_text(str(os.getpid()))  # whom to signal, in place at once
            written.replace(marker)
            while True:
                time.sleep(1)

    invprop.training.save_checkpoint = save


def main(argv: list[str]) -> None:
    kind, *args = argv
    if kind == "step":
        kill_in_step(int(args[0]))
        rest = args[1:]
    elif kind == "save":
        kill_in_save(args[0], float(args[1]))
        rest = args[2:]
    elif kind == "hold":
        hold_after(int(args[0]), Path(args[1]))
        rest = args[2:]
    else:
        raise SystemExit(__doc__)
    sys.argv = [str(STAGE), *rest]
    runpy.run_path(str(STAGE), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
