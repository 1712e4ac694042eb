"""The app `celery -A worker.app worker` and `recq` run, its settings read from the environment.

This module is an edge: it is the only place besides the CLI that reads ``os.environ``, and it
hands what it read to :func:`worker.celery_app.create_app`.
"""

from __future__ import annotations

import os

from worker.celery_app import RecqCelery, create_app
from worker.settings import Settings

app: RecqCelery = create_app(Settings.from_env(os.environ))
