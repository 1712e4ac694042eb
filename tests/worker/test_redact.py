"""Redaction: tokens, pre-signed URL signatures and URL passwords never leave the process."""

from __future__ import annotations

import json
import pickle

import jwt
import pytest

from worker.redact import redact, redact_values


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

    def test_a_presigned_url_with_escaped_slashes_loses_its_query_string(self):
        """JSON may write '/' as '\\/' (some encoders do): the signature goes all the same."""
        body = '{"url": "https:\\/\\/bucket.s3.amazonaws.com\\/a.mp4?X-Amz-Signature=abc123"}'
        assert "abc123" not in redact(body)

    @pytest.mark.parametrize(
        "text",
        [
            "https://bucket.s3.amazonaws.com/O'Brien/rec.mp4?X-Amz-Signature=SIG",
            'https://bucket/a"b/rec.mp4?X-Amz-Signature=SIG',
            "HTTPS://bucket/rec.mp4?X-Amz-Signature=SIG",
            # a repr of escaped JSON, as Celery dumps a message body
            'b\'{"u": "https:\\\\/\\\\/b\\\\/rec.mp4?X-Amz-Signature=SIG"}\'',
            # a quote in the query, before the signature
            '{"u": "https://b/rec.mp4?name=\\"x\\"&X-Amz-Signature=SIG"}',
            "https://b/rec.mp4?who=O'Brien&X-Amz-Signature=SIG",
            "https://b/backup/http:notes/rec.mp4?X-Amz-Signature=SIG",
            "https://b/" + "k" * 5000 + "/rec.mp4?X-Amz-Signature=SIG",
            "https://x/r/http://y/z?X-Amz-Signature=SIG",
        ],
        ids=[
            "quote-in-path",
            "double-quote-in-path",
            "upper-case",
            "repr",
            "escaped-quote",
            "quote",
            "scheme-word-in-path",
            "long-path",
            "url-in-path",
        ],
    )
    def test_no_quoting_or_spelling_of_a_url_keeps_its_signature(self, text):
        """Found by review: each of these kept its signature."""
        assert "SIG" not in redact(text)
        assert "[redacted]" in redact(text)

    def test_a_password_in_a_url_is_replaced(self):
        """A broker's or Redis's password, even in a mistyped URL; the rest stays readable."""
        assert (
            redact("amqp://guest:s3cret@rabbit:5672//") == "amqp://guest:[redacted]@rabbit:5672//"
        )
        assert redact("redis://:s3cret@cache:6379/0") == "redis://:[redacted]@cache:6379/0"
        assert "s3cret" not in redact("amqps:/user:s3cret@rabbit")

    def test_ordinary_text_is_untouched(self):
        """Text without secrets comes back as it was."""
        for text in [
            '{"message": "Recording is already running", "code": 4011}',
            "redis://cache:6379/0",
            "at 10:30 @home",
        ]:
            assert redact(text) == text


class TestEscapedAndEncoded:
    """Secrets in JSON text and reprs (VideoSDK's error bodies, Celery's lines), where an escape
    sequence glues a letter to them, and in spellings a URL also takes."""

    SIG = "SIGSECRET0123456789"
    URL = f"https://bucket.s3.amazonaws.com/rec.mp4?X-Amz-Signature={SIG}"
    TOKEN = jwt.encode({"apikey": "k", "exp": 9999999999}, "s" * 32, algorithm="HS256")

    @pytest.mark.parametrize(
        "text",
        [
            json.dumps({"message": f"rejected:\n{URL}"}),
            repr(f"see\t{URL}"),
            repr(pickle.dumps({"u": "https://b/" + "k" * 300 + f"?X-Amz-Signature={SIG}"})),
            json.dumps({"u": f"\u0001{URL}"}),
        ],
        ids=["json-newline", "repr-tab", "pickle-repr", "json-unicode-escape"],
    )
    def test_an_escape_before_a_url_keeps_no_signature(self, text):
        """'\\nhttps://' in JSON: the 'n' glued to the scheme hid the URL from redaction, and
        the signature reached states, events and `recq status`."""
        assert self.SIG not in redact(text)

    def test_an_escape_before_a_token_keeps_no_token(self):
        text = json.dumps({"message": f"token:\n{self.TOKEN}"})
        assert self.TOKEN.rsplit(".", 1)[1] not in redact(text)

    @pytest.mark.parametrize(
        "glue",
        ["token", "Bearer_", "bearer-", "jwt1", "\\u0022", "\\x00", "%3D", "\\n"],
        ids=[
            "word",
            "underscore",
            "hyphen",
            "digit",
            "unicode-escape",
            "hex-escape",
            "percent",
            "newline",
        ],
    )
    def test_a_token_glued_to_a_word_keeps_no_token_and_the_word_stays(self, glue):
        """A letter, digit, '_' or '-' right before "eyJ" hid the token from redaction: it
        reached states, events and logs whole."""
        text = f"rejected {glue}{self.TOKEN} for room"
        assert redact(text) == f"rejected {glue}[redacted] for room"

    def test_only_the_token_in_a_glued_run_goes(self):
        """The run is read to its first "eyJ"; what follows the token's third segment stays."""
        assert redact(f"x{self.TOKEN}.tail") == "x[redacted].tail"
        assert redact("noteyJ.abcd.efgh") == "noteyJ.abcd.efgh"

    def test_an_escape_before_a_url_password_keeps_no_password(self):
        assert "s3cret" not in redact(json.dumps({"m": "\nredis://:s3cret@cache:6379/0"}))

    @pytest.mark.parametrize(
        ("text", "secret"),
        [
            ("amqp:\\/\\/user:PASSW0RD@rabbit", "PASSW0RD"),
            ("redis%3A%2F%2Fuser%3APASSW0RD%40cache", "PASSW0RD"),
            ("redirect=%3D" + TOKEN, TOKEN.rsplit(".", 1)[1]),
        ],
        ids=["escaped-slashes", "percent-encoded", "token-after-percent-escape"],
    )
    def test_other_spellings_of_a_password_or_token_keep_no_secret(self, text, secret):
        assert secret not in redact(text)

    @pytest.mark.parametrize(
        "value",
        [
            f"https://bucket.s3.amazonaws.com/rec.mp4#X-Amz-Signature={SIG}",
            "https%3A%2F%2Fbucket.s3.amazonaws.com%2Frec.mp4%3FX-Amz-Signature%3D" + SIG,
            f"wss://stream.example.com/live?token={SIG}",
        ],
        ids=["fragment", "percent-encoded", "wss"],
    )
    def test_other_spellings_of_a_signed_url_keep_no_signature(self, value):
        assert self.SIG not in json.dumps(redact_values({"u": value}))


class TestRedactValues:
    def test_every_string_in_a_json_value_is_redacted_keys_included(self):
        value = {
            "https://h/p?sig=1": ["amqp://u:pw@h", {"n": 1, "ok": True, "none": None}],
            "plain": "no secret: here",
        }
        assert redact_values(value) == {
            "https://h/p?[redacted]": ["amqp://u:[redacted]@h", {"n": 1, "ok": True, "none": None}],
            "plain": "no secret: here",
        }

    def test_keys_that_redact_alike_each_keep_their_value(self):
        """Two URLs differing only in their signature were one key once redacted: the second
        value replaced the first, and metadata was lost without a word. Each is kept, the
        later ones numbered, and no signature is left."""
        value = {"https://h/p?sig=1": "a", "https://h/p?sig=2": "b", "https://h/p?sig=3": "c"}
        assert redact_values(value) == {
            "https://h/p?[redacted]": "a",
            "https://h/p?[redacted] (2)": "b",
            "https://h/p?[redacted] (3)": "c",
        }

    def test_a_numbered_key_never_replaces_a_key_of_that_name(self):
        value = {
            "https://h/p?[redacted] (2)": "first",
            "https://h/p?sig=1": "a",
            "https://h/p?sig=9": "b",
        }
        assert sorted(redact_values(value).values()) == ["a", "b", "first"]


class TestNoPathologicalText:
    @pytest.mark.timeout(60)
    @pytest.mark.parametrize(
        "text",
        [
            "a:b:" * 60_000,
            "https:" * 40_000,
            "https://" * 30_000,
            "eyJ" * 80_000,
            "\\neyJ" * 50_000,
            "https%3A%2F%2F" * 20_000,
            "https://a/b" * 25_000,
            "x\\u0041https://" * 15_000,
            "http://a\\" * 16_000,
            "redis%3A%2F%2F" * 5_000,
            "x" * 100_000 + "eyJ" * 30_000,
            "xeyJ" * 60_000,
            "eyJabcd.eyJabcd.." * 15_000,
        ],
        ids=[
            "colons",
            "schemes",
            "urls",
            "jwt-starts",
            "escaped-jwt-starts",
            "encoded-urls",
            "paths",
            "escaped-urls",
            "backslashed-paths",
            "encoded-schemes",
            "glued-jwt-starts",
            "glued-jwt-start-runs",
            "two-segment-jwts",
        ],
    )
    def test_a_long_adversarial_string_does_not_hang_redaction(self, text):
        """A hang guard, not a speed test: each of these took from a minute to many minutes
        when a pattern rescanned the rest of the text from every starting point (a metadata
        string of 64 KB is redacted on every state write). Now well under a second each."""
        assert redact(text) == text

    @pytest.mark.timeout(60)
    def test_a_long_run_of_fragments_does_not_hang_redaction(self):
        """The first URL's fragment runs to the end (all of it is redacted), once."""
        assert redact("https://a#" * 25_000) == "https://a#[redacted]"
