"""When RabbitMQ answers but refuses what the service asks for: a configuration error, not an outage.

An unknown exchange type (the consistent-hash plugin is not enabled), a queue or exchange declared earlier
with other arguments, missing permissions, a refused login or vhost: the broker is reachable, so "not
reachable, retrying" would send the operator the wrong way. Each refusal is turned into the broker's own
words plus the fix, for one log line and the ``/readyz`` body.

A TLS certificate the service does not accept (signed by another CA than ``cafile`` in ``AMQP_URL``, or
not naming the URL's host) counts as one too: the node answered, the fix is in the configuration, and
every retry without it fails the same way.
"""

from __future__ import annotations

import logging
import re
import ssl

import aiormq.exceptions
from aiormq.connection import exception_by_code
from pamqp import commands as spec

#: The plugin the partitioned topology needs, and the command that enables it on a node.
HASH_PLUGIN = "rabbitmq_consistent_hash_exchange"

#: RabbitMQ's two wordings for the consistent-hash exchange type without its plugin: "unknown" on a
#: node that never had it, "invalid" on one where it was enabled once and then disabled.
_HASH_EXCHANGE_REFUSED = re.compile(r"(unknown|invalid) exchange type 'x-consistent-hash'")

#: Queue arguments the service sets, and the setting each comes from.
_ARGUMENT_SETTINGS = {
    "x-delivery-limit": "SIGNALING_DELIVERY_LIMIT",
    "x-dead-letter-exchange": "SIGNALING_DEAD_LETTER_EXCHANGE",
}

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<argument>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']+)'"
)


class BrokerRefusal(Exception):
    """What the broker refused (its own words) and what to do about it."""

    def __init__(self, cause: str, fix: str) -> None:
        super().__init__(cause, fix)
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.cause}; fix: {self.fix}"


def _reply_text(error: BaseException) -> str:
    """The broker's reply text (aiormq puts it in the first argument, after its own preamble)."""
    text = str(error.args[0]) if error.args else str(error)
    quoted = re.search(r'"([A-Z_]+ - .*)"', text)
    return quoted.group(1) if quoted else text


def _inequivalent(text: str) -> str:
    match = _INEQUIVALENT.search(text)
    if match is None:
        return "delete it once it is drained and let the service declare it again"
    argument, kind, name = match["argument"], match["kind"], match["name"]
    setting = _ARGUMENT_SETTINGS.get(argument)
    if kind == "exchange":
        return f"exchange '{name}' exists with another {argument}; delete it or choose other names"
    if setting is not None:
        return (
            f"queue '{name}' was declared with another {argument}: set {setting} back to the value it "
            f"was declared with, or delete the queue once drained (rabbitmqctl delete_queue '{name}') "
            "so that the service declares it anew"
        )
    return (
        f"queue '{name}' was declared by something else or an older release with another {argument}; "
        f"delete it once drained (rabbitmqctl delete_queue '{name}') so that the service declares it anew"
    )


def _certificate_error(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind ``error``: aiormq re-raises the TLS handshake's
    ``SSLCertVerificationError`` as an ``AMQPConnectionError`` (``from`` it)."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def explain_refusal(error: BaseException) -> BrokerRefusal | None:  # noqa: PLR0911 - one return a case
    """A ``BrokerRefusal`` when ``error`` is the broker refusing us, ``None`` for anything else (an
    outage, a network fault), which is retried as such."""
    certificate = _certificate_error(error)
    if certificate is not None:
        return BrokerRefusal(
            f"the node's TLS certificate was not accepted: {certificate.verify_message}",
            "check the CA in AMQP_URL's cafile (it must be the CA that signed the node's certificate; "
            "without cafile the system CAs are used) and that the certificate names the host in AMQP_URL",
        )
    if isinstance(error, aiormq.exceptions.ProbableAuthenticationError):
        return BrokerRefusal(_reply_text(error), "check the user name and password in AMQP_URL")
    if isinstance(error, aiormq.exceptions.ConnectionCommandInvalid):
        text = _reply_text(error)
        if _HASH_EXCHANGE_REFUSED.search(text):
            return BrokerRefusal(
                text,
                f"enable the plugin on every node (rabbitmq-plugins enable {HASH_PLUGIN}), "
                "or set SIGNALING_PARTITIONS=1",
            )
        return BrokerRefusal(
            text, "the service's topology does not fit this broker (docs/operations/first-run.md)"
        )
    if isinstance(error, aiormq.exceptions.ChannelPreconditionFailed):
        text = _reply_text(error)
        return BrokerRefusal(text, _inequivalent(text))
    if isinstance(error, aiormq.exceptions.ChannelAccessRefused | aiormq.exceptions.ConnectionNotAllowed):
        return BrokerRefusal(
            _reply_text(error),
            "grant the service's RabbitMQ user the permissions docs/security.md lists",
        )
    if isinstance(error, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(error):
        # aiormq does not decode a Connection.Close that answers Connection.Open: RabbitMQ sends it
        # when the vhost does not exist or the user may not use it.
        return BrokerRefusal(
            "the broker closed the connection while it was being opened",
            "check that the vhost in AMQP_URL exists and that its user has permissions on it",
        )
    return None


def quiet_amqp_client_logs(level: str) -> None:
    """aio-pika logs every reconnect attempt with a traceback at WARNING, and aiormq its error line for
    a broker's refusal at every attempt; the service says each once, with the fix, so theirs would
    only bury it."""
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), logging.ERROR))
    closes = logging.getLogger("aiormq.connection")
    if not any(isinstance(existing, ExplainedCloseFilter) for existing in closes.filters):
        closes.addFilter(ExplainedCloseFilter())


#: aiormq's error line for a connection attempt that failed before AMQP started (TCP or TLS).
_TRANSPORT_ERROR = "error when creating transport: %r"


class ExplainedCloseFilter(logging.Filter):
    """For aiormq's logger: drops its error line for a ``Connection.Close`` that is a refusal the service
    explains itself. aiormq logs every close as an error, at each reconnection attempt, so a refusal
    (the consistent-hash exchange on a stock broker closes the whole connection) would repeat it every
    few seconds and bury the one line that says what to do. Other closes (a node shutting down,
    ``CONNECTION_FORCED``) keep aiormq's line. Likewise its "error when creating transport" line for a
    certificate the service does not accept; for a refused or unreachable address it stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg == _TRANSPORT_ERROR and isinstance(args, tuple) and len(args) == 1:
            # The same for its line about a TLS handshake that failed on the node's certificate.
            (error,) = args
            return not (isinstance(error, BaseException) and explain_refusal(error) is not None)
        if not (
            isinstance(record.msg, str)
            and record.msg.startswith("Unexpected connection close")
            and isinstance(args, tuple)
            and len(args) == 3
        ):
            return True
        _connection, reply_code, reply_text = args
        if not isinstance(reply_code, int) or not isinstance(reply_text, str):
            return True
        close = spec.Connection.Close(reply_code=reply_code, reply_text=reply_text)
        return explain_refusal(exception_by_code(close)) is None
