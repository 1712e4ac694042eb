"""Settings: read once from the environment, every problem named with its fix."""

from __future__ import annotations

import pytest

from worker.errors import SettingsError
from worker.settings import DEFAULT_BROKER, DEFAULT_ENDPOINT, Secret, Settings

CREDENTIALS = {"VIDEOSDK_API_KEY": "key-1", "VIDEOSDK_SECRET": "s3cret"}


class TestFromEnv:
    def test_an_empty_environment_gives_the_documented_defaults(self):
        """Without variables recq talks to VideoSDK's public endpoint and a local Redis."""
        settings = Settings.from_env({})
        assert settings.api_endpoint == DEFAULT_ENDPOINT
        assert settings.broker_url == DEFAULT_BROKER
        assert settings.redis_url == DEFAULT_BROKER
        assert settings.credentials is None

    def test_credentials_are_read_from_the_names_of_the_official_sdk(self):
        """VIDEOSDK_API_KEY and VIDEOSDK_SECRET become the credentials."""
        settings = Settings.from_env(CREDENTIALS)
        assert settings.credentials is not None
        assert settings.credentials.api_key == "key-1"
        assert settings.credentials.secret.reveal() == "s3cret"

    def test_the_secret_can_come_from_a_mounted_file(self, tmp_path):
        """VIDEOSDK_SECRET_FILE names a file holding the secret, its newline stripped."""
        secret_file = tmp_path / "secret"
        secret_file.write_text("from-file\n")
        env = {"VIDEOSDK_API_KEY": "k", "VIDEOSDK_SECRET_FILE": str(secret_file)}
        settings = Settings.from_env(env)
        assert settings.credentials is not None
        assert settings.credentials.secret.reveal() == "from-file"

    def test_the_redis_store_defaults_to_a_redis_broker(self):
        """With a Redis broker and no RECQ_REDIS_URL, state lives on the broker's Redis."""
        settings = Settings.from_env({"CELERY_BROKER_URL": "redis://cache:6380/2"})
        assert settings.redis_url == "redis://cache:6380/2"

    def test_a_rabbitmq_broker_needs_its_own_redis_store(self):
        """An amqp:// broker without RECQ_REDIS_URL is refused, naming the variable to set."""
        with pytest.raises(SettingsError, match="RECQ_REDIS_URL is not set"):
            Settings.from_env({"CELERY_BROKER_URL": "amqp://guest:guest@localhost:5672//"})

    def test_every_problem_is_reported_at_once(self):
        """A bad broker URL and a bad number are both named in one error."""
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({"CELERY_BROKER_URL": "kafka://x", "RECQ_RETRY_ATTEMPTS": "many"})
        assert len(caught.value.problems) == 2
        assert "CELERY_BROKER_URL" in str(caught.value)
        assert "RECQ_RETRY_ATTEMPTS='many' is not a whole number" in str(caught.value)

    def test_a_mistyped_broker_url_is_named_without_its_password(self):
        """The error names the variable and shows the URL, its password replaced."""
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({"CELERY_BROKER_URL": "rabbitmq://user:s3cret@rabbit:5671//"})
        assert "CELERY_BROKER_URL='rabbitmq://[redacted]@rabbit:5671//'" in str(caught.value)
        assert "s3cret" not in str(caught.value)

    def test_a_key_without_a_secret_says_what_to_set(self):
        """Half the credentials is an error naming the missing half."""
        with pytest.raises(SettingsError, match="VIDEOSDK_SECRET is not"):
            Settings.from_env({"VIDEOSDK_API_KEY": "k"})

    def test_both_forms_of_secret_are_refused(self, tmp_path):
        """VIDEOSDK_SECRET and VIDEOSDK_SECRET_FILE together are ambiguous."""
        secret_file = tmp_path / "secret"
        secret_file.write_text("x")
        env = {**CREDENTIALS, "VIDEOSDK_SECRET_FILE": str(secret_file)}
        with pytest.raises(SettingsError, match="keep only one"):
            Settings.from_env(env)

    def test_an_unreadable_secret_file_is_named(self, tmp_path):
        """A missing secret file is reported with its path."""
        env = {"VIDEOSDK_API_KEY": "k", "VIDEOSDK_SECRET_FILE": str(tmp_path / "nope")}
        with pytest.raises(SettingsError, match="cannot be read"):
            Settings.from_env(env)

    def test_a_secret_set_as_the_secret_file_by_mistake_is_not_echoed(self):
        """A value with no '/' cannot be read as a file, and may be the secret itself."""
        env = {"VIDEOSDK_API_KEY": "k", "VIDEOSDK_SECRET_FILE": "3f9c2a7e5b1d4c8a9e0f6b2d"}
        with pytest.raises(SettingsError) as raised:
            Settings.from_env(env)
        shown = "VIDEOSDK_SECRET_FILE (not shown: it may be the secret itself) cannot be read"
        assert shown in str(raised.value)
        assert "3f9c2a7e" not in str(raised.value)

    def test_numbers_below_their_minimum_are_refused(self):
        """A token lifetime under two minutes would expire in flight."""
        with pytest.raises(SettingsError, match="RECQ_TOKEN_TTL='30' must be at least 120"):
            Settings.from_env({"RECQ_TOKEN_TTL": "30"})

    def test_a_visibility_timeout_shorter_than_a_delivery_is_refused(self):
        """The broker must not hand a job that may still be running to a second worker."""
        env = {"RECQ_VISIBILITY_TIMEOUT": "60", "RECQ_RETRY_WINDOW": "30"}
        with pytest.raises(SettingsError, match="RECQ_VISIBILITY_TIMEOUT=60 must exceed"):
            Settings.from_env(env)
        longer = Settings.from_env({**env, "RECQ_VISIBILITY_TIMEOUT": "70"})
        assert longer.visibility_timeout >= longer.claim_lease + 10

    @pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
    def test_numbers_that_are_not_finite_are_refused(self, value):
        """float() takes them, and a worker then failed every job (a NaN timeout)."""
        with pytest.raises(SettingsError, match=f"RECQ_CONNECT_TIMEOUT='{value}' is not a number"):
            Settings.from_env({"RECQ_CONNECT_TIMEOUT": value})

    @pytest.mark.parametrize("digits", [23, 400], ids=["beyond-redis", "beyond-a-float"])
    def test_a_state_ttl_beyond_what_redis_keeps_is_refused(self, digits):
        """Redis refused every state write with it, and no job could run."""
        with pytest.raises(SettingsError, match=r"RECQ_STATE_TTL=.* must be at most 3\.1536e\+08"):
            Settings.from_env({"RECQ_STATE_TTL": "9" * digits})

    @pytest.mark.parametrize("variable", ["CELERY_BROKER_URL", "RECQ_REDIS_URL"])
    def test_a_redis_database_that_is_not_a_number_is_refused(self, variable):
        """redis-py read redis://host/abc as database 0: jobs went where no worker looked."""
        with pytest.raises(SettingsError, match=f"{variable}=.* names the Redis database 'abc'"):
            Settings.from_env({variable: "redis://127.0.0.1:6379/abc"})
        assert Settings.from_env({variable: "redis://127.0.0.1:6379"}).broker_url

    def test_a_bad_broker_is_named_once_when_redis_defaults_to_it(self):
        """RECQ_REDIS_URL unset takes the broker's URL: its problem is the broker's alone."""
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({"CELERY_BROKER_URL": "redis://:pw@host:99999/0"})
        assert [p.split("=")[0] for p in caught.value.problems] == ["CELERY_BROKER_URL"]

    def test_metrics_listen_on_every_interface_unless_an_address_is_given(self):
        """RECQ_METRICS_ADDRESS narrows the metrics port to one address (IPv4 or IPv6)."""
        assert Settings.from_env({}).metrics_address == "0.0.0.0"
        assert Settings.from_env({"RECQ_METRICS_ADDRESS": "127.0.0.1"}).metrics_address == (
            "127.0.0.1"
        )
        assert Settings.from_env({"RECQ_METRICS_ADDRESS": "::1"}).metrics_address == "::1"

    def test_a_metrics_address_that_is_not_an_ip_address_is_refused(self):
        """A host name or a typo is named, with the two usual choices."""
        with pytest.raises(SettingsError, match="RECQ_METRICS_ADDRESS='local' is not an IP"):
            Settings.from_env({"RECQ_METRICS_ADDRESS": "local"})

    @pytest.mark.parametrize(
        ("environ", "password"),
        [
            ({"CELERY_BROKER_URL": "redis://:" + "P" * 300 + "@redis:99999/0"}, "P" * 40),
            ({"CELERY_BROKER_URL": "redis://:ab/SLASHPW@redis:6379/0"}, "SLASHPW"),
            (
                {
                    "CELERY_BROKER_URL": "amqp://u:ab/SLASHPW@rabbit:5672/vh",
                    "RECQ_REDIS_URL": "redis://redis:6379/0",
                },
                "SLASHPW",
            ),
            ({"RECQ_REDIS_URL": "redis://redis:6379/x?password=QUERYPW"}, "QUERYPW"),
            ({"CELERY_BROKER_URL": "redis://:AT@SIGNPW@redis:99999/0"}, "SIGNPW"),
        ],
        ids=["long", "slash", "amqp-slash", "query", "at-sign"],
    )
    def test_a_settings_error_never_shows_a_url_s_password(self, environ, password):
        """A password holding '/' or '@', a long one, or one in the query string (redis-py
        reads it there) was shown whole: the URL is shown without anything that may be one."""
        with pytest.raises(SettingsError) as caught:
            Settings.from_env(environ)
        assert password not in str(caught.value)

    @pytest.mark.parametrize(
        "environ",
        [
            {"CELERY_BROKER_URL": "amqp://rabbit:5672/team@prod", "RECQ_REDIS_URL": "redis://r"},
            {"CELERY_BROKER_URL": "redis://redis:6379/0?client_name=worker@host"},
        ],
        ids=["vhost", "query"],
    )
    def test_an_at_sign_after_a_valid_host_is_not_taken_for_a_password(self, environ):
        assert Settings.from_env(environ).broker_url == environ["CELERY_BROKER_URL"]

    @pytest.mark.parametrize(
        "url",
        ["redis://:SECRET?PW@host/0", "admin:SECRETPW@redis:6379", "redis:/u:SECRETPW@host"],
        ids=["question-mark-in-password", "no-scheme", "one-slash"],
    )
    def test_other_misspelt_urls_never_show_their_password(self, url):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({"CELERY_BROKER_URL": url})
        assert "SECRET" not in str(caught.value)

    def test_a_password_holding_a_slash_is_named_as_the_problem(self):
        """'/' ends a URL's host part: the error says to percent-encode it."""
        with pytest.raises(SettingsError, match="write them percent-encoded"):
            Settings.from_env({"CELERY_BROKER_URL": "redis://:ab/cd@redis:6379/0"})

    def test_a_base64_secret_set_as_the_secret_file_by_mistake_is_not_shown(self):
        """A base64 secret holds '/': shown only when its directory exists (a path)."""
        secret = "q8Zt/Kp2+SECRETVALUE9xR4="
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({"VIDEOSDK_API_KEY": "k", "VIDEOSDK_SECRET_FILE": secret})
        assert "SECRETVALUE" not in str(caught.value)

    def test_a_secret_starting_with_a_slash_set_as_the_file_is_not_shown(self):
        """'/' is a directory: a secret that starts with '/' is not taken for a path."""
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({"VIDEOSDK_API_KEY": "k", "VIDEOSDK_SECRET_FILE": "/q8ZtSECRETVAL"})
        assert "SECRETVAL" not in str(caught.value)

    def test_a_missing_secret_file_in_an_existing_directory_is_named(self, tmp_path):
        path = tmp_path / "videosdk-secret"
        with pytest.raises(SettingsError, match=f"VIDEOSDK_SECRET_FILE='{path}' cannot be read"):
            Settings.from_env({"VIDEOSDK_API_KEY": "k", "VIDEOSDK_SECRET_FILE": str(path)})

    def test_a_secret_file_that_is_not_utf8_is_a_settings_error(self, tmp_path):
        """It raised UnicodeDecodeError, a traceback instead of the usual message."""
        path = tmp_path / "secret"
        path.write_bytes(b"\xff\xfesecret")
        with pytest.raises(SettingsError, match="it is not UTF-8 text"):
            Settings.from_env({"VIDEOSDK_API_KEY": "k", "VIDEOSDK_SECRET_FILE": str(path)})

    def test_the_endpoint_loses_its_trailing_slash(self):
        """Paths are joined to the endpoint without doubling the slash."""
        settings = Settings.from_env({"VIDEOSDK_API_ENDPOINT": "http://127.0.0.1:9/"})
        assert settings.api_endpoint == "http://127.0.0.1:9"


class TestSecrecy:
    def test_the_secret_never_shows_in_a_repr(self):
        """Printing settings, as a traceback or a debug log would, hides the secret."""
        settings = Settings.from_env(CREDENTIALS)
        assert "s3cret" not in repr(settings)
        assert "s3cret" not in str(Secret("s3cret"))

    def test_a_worker_without_credentials_is_told_how_to_get_them(self):
        """require_credentials names both variables and the sandbox alternative."""
        with pytest.raises(SettingsError, match="VIDEOSDK_API_KEY and VIDEOSDK_SECRET"):
            Settings().require_credentials()
