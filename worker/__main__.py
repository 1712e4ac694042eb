"""``python -m worker`` is the ``recq`` command."""

import sys

from worker.cli import main

sys.exit(main())
