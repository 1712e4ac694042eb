"""Redaction: tokens and pre-signed URL signatures never leave the process."""

from __future__ import annotations

import jwt

from worker.redact import redact


class TestRedact:
    def test_a_jwt_is_replaced(self):
        """Any JWT in a text is replaced, wherever it stands."""
        token = jwt.encode(
            {"apikey": "k"}, "a-secret-of-at-least-thirty-two-bytes", algorithm="HS256"
        )
        assert token not in redact(f"rejected token {token} for room")
        assert "[redacted]" in redact(f"rejected token {token} for room")

    def test_a_presigned_url_loses_its_query_string(self):
        """The signature of a pre-signed URL lives in its query string, which goes."""
        url = "https://bucket.s3.amazonaws.com/a.mp4?X-Amz-Signature=abc123&X-Amz-Credential=x"
        cleaned = redact(f"bad preSignedUrl {url}.")
        assert "abc123" not in cleaned
        assert "https://bucket.s3.amazonaws.com/a.mp4?[redacted]" in cleaned

    def test_ordinary_text_is_untouched(self):
        """Text without secrets comes back as it was."""
        text = '{"message": "Recording is already running", "code": 4011}'
        assert redact(text) == text
