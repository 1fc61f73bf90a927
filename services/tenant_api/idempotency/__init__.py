"""Stored answers to ``Idempotency-Key`` requests (the middleware lives in ``middleware.py``)."""
