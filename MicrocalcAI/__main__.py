"""``python -m MicrocalcAI ...`` is the same as the ``microcalcai`` command."""

import sys

from .cli import main

sys.exit(main())
