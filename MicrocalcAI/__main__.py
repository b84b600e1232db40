"""``python -m MicrocalcAI ...`` is the same as the ``microcalcai`` command."""

import sys

from MicrocalcAI.cli import main

sys.exit(main())
