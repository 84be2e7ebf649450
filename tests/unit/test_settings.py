"""Settings: one clear error naming a missing or invalid setting, secrets from files, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from livekit_signaling.app.settings import SettingsError, load_settings, settings_table

BASE = {"LIVEKIT_URL": "http://lk:7880", "LIVEKIT_API_KEY": "key", "LIVEKIT_API_SECRET": "very-secret"}


def test_defaults_and_derived_values() -> None:
    settings = load_settings(BASE)
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.public_url == "http://lk:7880"
    assert settings.command_exchange == "livekit.commands"
    assert settings.http_port == 8080


@pytest.mark.parametrize("missing", ["LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"])
def test_missing_required_setting_is_named(missing: str) -> None:
    environ = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(SettingsError, match=f"^{missing} is required"):
        load_settings(environ)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SIGNALING_PARTITIONS", "0"),
        ("AMQP_PREFETCH", "many"),
        ("LIVEKIT_URL", "lk:7880"),
        ("SCREEN_SHARE_REQUIRES_PERMISSION", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("OTEL_TRACES_EXPORTER", "jaeger"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
    ],
)
def test_invalid_setting_is_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}: '{value}' is invalid"):
        load_settings({**BASE, name: value})


def test_secret_from_file_and_never_shown(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file-secret\n")
    environ = {
        **{k: v for k, v in BASE.items() if k != "LIVEKIT_API_SECRET"},
        "LIVEKIT_API_SECRET_FILE": str(secret_file),
        "AMQP_URL": "amqps://u:pw@h:5671/",
    }
    settings = load_settings(environ)
    assert settings.livekit_api_secret == "from-file-secret"
    assert "from-file-secret" not in repr(settings)
    assert "pw" not in repr(settings)


def test_invalid_secret_value_is_not_echoed() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({**BASE, "AMQP_URL": "http://user:hunter2@rabbit/"})
    assert str(refused.value) == "AMQP_URL: is invalid: expected an amqp://host or amqps://host URL"
    assert "hunter2" not in str(refused.value)


def test_several_broker_addresses_in_order() -> None:
    settings = load_settings(
        {**BASE, "AMQP_URL": "amqp://u:pw@rabbit-0:5672/prod, amqps://u:pw@rabbit-1/prod,amqp://rabbit-2"}
    )
    assert settings.amqp_urls == (
        "amqp://u:pw@rabbit-0:5672/prod",
        "amqps://u:pw@rabbit-1/prod",
        "amqp://rabbit-2",
    )


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (
            "amqp://u:hunter2@a/,http://u:hunter2@b/",
            "address 2 of 2: expected an amqp://host or amqps://host URL",
        ),
        ("amqp://u:hunter2@a/,,amqp://b/", "address 2 of 3: empty (a stray comma?)"),
        ("amqp://u:hunter2@a/,amqp:///vhost", "address 2 of 2: expected an amqp://host or amqps://host URL"),
    ],
)
def test_each_broker_address_is_checked_and_never_shown(value: str, error: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings({**BASE, "AMQP_URL": value})
    assert str(refused.value) == f"AMQP_URL: is invalid: {error}"
    assert "hunter2" not in str(refused.value)


def test_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^LIVEKIT_API_SECRET_FILE: cannot read"):
        load_settings({**BASE, "LIVEKIT_API_SECRET_FILE": str(tmp_path / "absent")})


def test_docs_settings_page_is_generated_from_settings_table() -> None:
    """The settings page asks the docs hook for the table, and the hook renders settings_table() as is."""
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("docs_hook", root / "docs/hooks/generate.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = (root / "docs/operations/settings.md").read_text()
    assert "<!-- generated: settings -->" in page.splitlines()
    assert settings_table() in hook.expand(page)
    assert "<!-- generated:" not in hook.expand(page)


def test_tracing_follows_the_sdks_variables() -> None:
    """A traces endpoint is used as it is, a base endpoint gets /v1/traces; an endpoint makes otlp the
    default exporter, none otherwise (propagation only)."""
    assert load_settings(BASE).tracing.exporter == "none"
    base = load_settings({**BASE, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}).tracing
    assert (base.exporter, base.otlp_endpoint) == ("otlp", "http://collector:4318/v1/traces")
    full = load_settings({**BASE, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c.example/otlp"}).tracing
    assert (full.exporter, full.otlp_endpoint) == ("otlp", "https://c.example/otlp")
    chosen = load_settings(
        {**BASE, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "console"}
    ).tracing
    assert chosen.exporter == "console"
    assert load_settings({**BASE, "OTEL_SDK_DISABLED": "true"}).tracing.disabled


def test_only_the_http_protobuf_protocol_is_taken() -> None:
    with pytest.raises(
        SettingsError, match="OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' is invalid: only http/protobuf"
    ):
        load_settings({**BASE, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_exporter_headers_are_a_secret() -> None:
    settings = load_settings({**BASE, "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=s3cr%3Dt,tenant=a"})
    assert dict(settings.tracing.otlp_headers) == {"x-api-key": "s3cr=t", "tenant": "a"}
    assert "s3cr" not in repr(settings) and "s3cr" not in repr(settings.tracing)
    assert "s3cr" not in settings.tracing.describe()
