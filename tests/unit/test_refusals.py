"""Broker refusals turned into cause and fix (``livekit_signaling.transport.refusals``), and aiormq's
repeated error line for a refusal kept out of the log (tests/integration/test_first_run.py runs them
for real)."""

from __future__ import annotations

import logging
import ssl

import aiormq.exceptions
import pytest

from livekit_signaling.transport.refusals import HASH_PLUGIN, ExplainedCloseFilter, explain_refusal

UNKNOWN_TYPE = "COMMAND_INVALID - unknown exchange type 'x-consistent-hash'"
#: What a node answers where the plugin was enabled once and then disabled.
INVALID_TYPE = "COMMAND_INVALID - invalid exchange type 'x-consistent-hash'"


@pytest.mark.parametrize("text", [UNKNOWN_TYPE, INVALID_TYPE])
def test_a_broker_without_the_plugin_is_told_the_plugin_command_and_the_alternative(text: str) -> None:
    refusal = explain_refusal(aiormq.exceptions.ConnectionCommandInvalid(text))
    assert refusal is not None
    assert refusal.cause == text
    assert f"rabbitmq-plugins enable {HASH_PLUGIN}" in refusal.fix
    assert "SIGNALING_PARTITIONS=1" in refusal.fix


def test_a_queue_declared_with_another_delivery_limit_names_the_setting() -> None:
    text = (
        "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q.0' in vhost '/': "
        "received '5' but current is '99'"
    )
    refusal = explain_refusal(aiormq.exceptions.ChannelPreconditionFailed(text))
    assert refusal is not None
    assert "SIGNALING_DELIVERY_LIMIT" in refusal.fix and "rabbitmqctl delete_queue 'q.0'" in refusal.fix


def _as_aiormq_raises_it(cause: BaseException) -> aiormq.exceptions.AMQPConnectionError:
    """aiormq's TLS transport: ``raise AMQPConnectionError(*e.args) from e``."""
    try:
        try:
            raise cause
        except OSError as error:
            raise aiormq.exceptions.AMQPConnectionError(*error.args) from error
    except aiormq.exceptions.AMQPConnectionError as raised:
        return raised


def test_a_certificate_not_accepted_names_the_ca_in_the_url() -> None:
    """tests/integration/test_tls.py sees it for real, against a node with a certificate of another CA."""
    failure = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    failure.verify_message = "unable to get local issuer certificate"
    refusal = explain_refusal(_as_aiormq_raises_it(failure))
    assert refusal is not None
    assert "TLS certificate was not accepted: unable to get local issuer certificate" in refusal.cause
    assert "check the CA in AMQP_URL's cafile" in refusal.fix


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError("reset"),
        aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"),
        # A handshake cut short (a node going down mid-handshake) is an outage, not a refusal.
        _as_aiormq_raises_it(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")),
    ],
)
def test_an_outage_is_not_a_refusal(error: BaseException) -> None:
    assert explain_refusal(error) is None


def _close_record(reply_code: int, reply_text: str) -> logging.LogRecord:
    """The record aiormq's connection logs when the broker closes the connection."""
    return logging.LogRecord(
        "aiormq.connection",
        logging.ERROR,
        __file__,
        1,
        'Unexpected connection close from remote "%s", Connection.Close(reply_code=%r, reply_text=%r)',
        ("amqp://127.0.0.1:5672/", reply_code, reply_text),
        None,
    )


def test_aiormq_line_for_an_explained_refusal_is_dropped() -> None:
    assert not ExplainedCloseFilter().filter(_close_record(503, UNKNOWN_TYPE))


@pytest.mark.parametrize(
    ("reply_code", "reply_text"),
    [(320, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"), (541, "x")],
)
def test_aiormq_line_for_an_outage_stays(reply_code: int, reply_text: str) -> None:
    assert ExplainedCloseFilter().filter(_close_record(reply_code, reply_text))


def test_other_aiormq_lines_stay() -> None:
    record = logging.LogRecord("aiormq.connection", logging.ERROR, __file__, 1, "other %s", ("x",), None)
    assert ExplainedCloseFilter().filter(record)


def _transport_record(error: BaseException) -> logging.LogRecord:
    """aiormq's line for a connection attempt that failed before AMQP (TCP connect or TLS handshake)."""
    return logging.LogRecord(
        "aiormq.connection", logging.ERROR, __file__, 1, "error when creating transport: %r", (error,), None
    )


def test_aiormq_transport_line_for_a_certificate_not_accepted_is_dropped() -> None:
    failure = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    failure.verify_message = "self-signed certificate in certificate chain"
    assert not ExplainedCloseFilter().filter(_transport_record(_as_aiormq_raises_it(failure)))


def test_aiormq_transport_line_for_an_unreachable_node_stays() -> None:
    refused = _as_aiormq_raises_it(ConnectionRefusedError(111, "Connect call failed"))
    assert ExplainedCloseFilter().filter(_transport_record(refused))
