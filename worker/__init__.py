"""recq: a reliable recording worker for VideoSDK.

Producers publish recording jobs onto a broker; Celery workers validate them, sign VideoSDK
tokens, call the VideoSDK REST API under one retry policy, and publish what happened as events.
Start with :mod:`worker.producer` to publish jobs and :mod:`worker.celery_app` for the worker.
"""
