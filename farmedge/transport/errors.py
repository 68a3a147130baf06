"""The transport's errors: one root, :class:`TransportError`; paho's return
and reason codes are translated into these where the call is made."""

from __future__ import annotations

__all__ = ["BrokerUnreachable", "BrokerUrlError", "ConnectRefused", "ConnectionLost",
           "NoConnack", "NotConnected", "TransportError"]


class TransportError(Exception):
    """Something between farmedge and its MQTT broker went wrong."""


class BrokerUrlError(TransportError, ValueError):
    """A broker URL or TLS setting that cannot be used: a configuration error
    (a ValueError too, so a settings validator reports it with file, line and key)."""


class BrokerUnreachable(TransportError):
    """The TCP or TLS connection could not be made, or the broker sent no CONNACK."""


class NoConnack(BrokerUnreachable):
    """The TCP (and TLS) connection was made, but no CONNACK came: something
    listens there that does not answer as a broker should."""


class ConnectRefused(TransportError):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, code: int, reason: str, hint: str = "") -> None:
        super().__init__(f"broker refused: {reason.lower()} (rc {code})")
        self.code = code
        self.reason = reason
        #: What the operator can do about it ("" when nothing specific).
        self.hint = hint


class ConnectionLost(TransportError):
    """An accepted connection ended."""


class NotConnected(TransportError):
    """A publish or subscribe while the connection is down."""
