"""``python -m MicrocalcAI ...`` is the same as the ``microcalcai`` command."""

import sys

from MicrocalcAI.cli import main

if __name__ == "__main__":  # not when a spawned worker process re-imports this module
    sys.exit(main())
