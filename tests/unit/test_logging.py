"""Log lines never carry the credentials of a URL, whoever logs it (aiormq names its connection by its
URL with the password masked but the user name shown)."""

from __future__ import annotations

import json
import logging

import pytest

from livekit_signaling.telemetry.logging import JsonFormatter, TextFormatter


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
def test_url_credentials_are_dropped_from_log_lines(formatter: logging.Formatter) -> None:
    record = logging.LogRecord(
        "aiormq.connection",
        logging.ERROR,
        __file__,
        1,
        'Unexpected connection close from remote "%s", Connection.Close(reply_code=320)',
        ("amqp://signaling:******@rabbitmq-server-1.rabbitmq-nodes:5672/opentalk?heartbeat=5",),
        None,
    )
    line = formatter.format(record)
    if isinstance(formatter, JsonFormatter):
        line = json.loads(line)["message"]
    assert "signaling" not in line
    assert "amqp://rabbitmq-server-1.rabbitmq-nodes:5672/opentalk?heartbeat=5" in line
