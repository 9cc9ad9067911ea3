"""settings.py: defaults, then the environment, then overrides; a bad value stops the start."""

import pytest

from app import create_app
from settings import DEFAULTS

KEY = "sk-test-0123456789abcdefSECRET"


def test_the_app_runs_on_its_defaults_alone():
    app = create_app()
    assert {key: app.config[key] for key in DEFAULTS} == DEFAULTS
    assert app.extensions["chat_model"].name == "sse-demo-offline"  # no key: offline
    assert app.extensions["broker"].name == "memory"  # no REDIS_URL: this process only


def test_settings_come_from_the_sse_prefixed_environment_as_json(monkeypatch):
    monkeypatch.setenv("SSE_HEARTBEAT", "7")
    monkeypatch.setenv("SSE_X_ACCEL_BUFFERING", "false")
    monkeypatch.setenv("SSE_CORS_ORIGINS", "https://a.example")  # not JSON: taken as text
    config = create_app().config
    assert (config["HEARTBEAT"], config["X_ACCEL_BUFFERING"], config["CORS_ORIGINS"]) == (
        7, False, "https://a.example")


def test_overrides_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("SSE_HEARTBEAT", "7")
    assert create_app({"HEARTBEAT": 3}).config["HEARTBEAT"] == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SSE_HEARTBEAT": "0"}, "SSE_HEARTBEAT must be a number >= 0.01"),
        ({"SSE_HEARTBEAT": '"soon"'}, "SSE_HEARTBEAT must be a number"),
        ({"SSE_RETRY_MS": "1500.5"}, "SSE_RETRY_MS must be a whole number >= 0"),
        ({"SSE_MAX_STREAMS": "-1"}, "SSE_MAX_STREAMS must be a number >= 0"),
        ({"SSE_WRITE_TIMEOUT": "0"}, "SSE_WRITE_TIMEOUT must be a number"),
        ({"SSE_BODY_TIMEOUT": "true"}, "SSE_BODY_TIMEOUT must be a number"),
        ({"SSE_X_ACCEL_BUFFERING": '"no"'}, "SSE_X_ACCEL_BUFFERING must be true or false"),
        ({"SSE_MIN_INTERVAL": "5", "SSE_MAX_INTERVAL": "1"}, "SSE_MIN_INTERVAL must not exceed"),
        ({"SSE_CORS_ORIGINS": "[1]"}, "SSE_CORS_ORIGINS must be a string"),
        ({"SSE_CHAT_TOKEN_DELAY": "-1"}, "SSE_CHAT_TOKEN_DELAY must be a number"),
        ({"SSE_CHAT_TOKEN_DELAY": "20"}, "SSE_CHAT_TOKEN_DELAY must not exceed SSE_HEARTBEAT"),
        ({"SSE_CHAT_MAX_BODY": "0"}, "SSE_CHAT_MAX_BODY must be a number >= 1"),
        ({"SSE_CHAT_UPSTREAM_TIMEOUT": '"long"'}, "SSE_CHAT_UPSTREAM_TIMEOUT must be a number"),
        ({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "api.openai.com/v1"},
         "OPENAI_BASE_URL must start with http:// or https://"),
        ({"SSE_BROADCAST_HISTORY": "0"}, "SSE_BROADCAST_HISTORY must be a whole number >= 1"),
        ({"SSE_BROADCAST_QUEUE": "2.5"}, "SSE_BROADCAST_QUEUE must be a whole number >= 1"),
        ({"SSE_BROADCAST_MAX_BYTES": "true"}, "SSE_BROADCAST_MAX_BYTES must be a whole number"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must start with redis://"),
        ({"SSE_BROADCAST_STREAM": '""'}, "SSE_BROADCAST_STREAM must be a non-empty Redis key"),
        ({"SSE_CHAT_KEY_PREFIX": '""'}, "SSE_CHAT_KEY_PREFIX must be a non-empty Redis key"),
        ({"SSE_CHAT_MAX_ANSWERS": "0"}, "SSE_CHAT_MAX_ANSWERS must be a whole number >= 1"),
        ({"SSE_CHAT_MAX_ANSWER_BYTES": "1.5"}, "SSE_CHAT_MAX_ANSWER_BYTES must be a whole"),
        ({"SSE_CHAT_ABANDON_SECONDS": "-1"}, "SSE_CHAT_ABANDON_SECONDS must be a number >= 0"),
        ({"SSE_CHAT_KEEP_SECONDS": '"long"'}, "SSE_CHAT_KEEP_SECONDS must be a number"),
    ],
)
def test_a_bad_setting_stops_the_start_naming_the_variable(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        create_app()


def test_a_redis_url_with_a_password_is_not_echoed_in_the_error(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "http://user:hunter2@example")
    with pytest.raises(ValueError) as failure:
        create_app()
    assert "hunter2" not in str(failure.value)


def test_redis_url_from_the_environment_picks_the_redis_broker(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never contacted
    app = create_app({"TESTING": True})
    assert app.extensions["broker"].name == "redis"
    assert app.test_client().get("/healthz").json["broker"] == "redis"


def test_a_key_in_the_environment_selects_the_real_model(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_MODEL", "gpt-test")
    client = create_app().test_client()
    assert [m["id"] for m in client.get("/v1/models").json["data"]] == ["gpt-test"]


def test_an_empty_openai_variable_leaves_the_default(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "")
    assert create_app().config["OPENAI_BASE_URL"] == DEFAULTS["OPENAI_BASE_URL"]
