"""Thin Celery tasks: each decodes its message and hands the job to :mod:`worker`."""
