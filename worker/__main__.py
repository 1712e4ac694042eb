"""``python -m worker`` is the ``recq`` command."""

import sys

from worker.entry import main

sys.exit(main())
