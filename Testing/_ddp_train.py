"""torchrun entry point for test_train_ddp.py: ``train(config)``, cancelled at a fraction of the run.

Every rank's progress callback raises at the same iteration, as a user's cancel would on a
single machine, so the loop writes its checkpoint collectively and the test can resume it.
"""

from __future__ import annotations

import sys

from MicrocalcAI.core.errors import CancelledError
from MicrocalcAI.training.config import TrainConfig
from MicrocalcAI.training.loop import train


def main(config_path: str, cancel_at: float) -> int:
    def progress(fraction: float, message: str) -> None:
        if fraction >= cancel_at:
            raise CancelledError("test stop")

    try:
        train(TrainConfig.from_json(config_path), progress=progress)
    except CancelledError:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
