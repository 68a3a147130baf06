"""Transport: the MQTT adapter. Broker URLs, credentials and TLS
(:mod:`.broker`), errors (:mod:`.errors`, root :class:`TransportError`), the
reconnect loop (:mod:`.reconnect`, with :class:`farmedge.backoff.Backoff`),
the edge's source client (:mod:`.mqtt`) and the publisher everyone else
uses (:mod:`.publisher`).

Imports only :mod:`farmedge.contract`, :mod:`farmedge.config`,
:mod:`farmedge.logs` and :mod:`farmedge.backoff` (docs/architecture.md)."""

from .errors import (
    BrokerUnreachable,
    BrokerUrlError,
    ConnectionLost,
    ConnectRefused,
    NoConnack,
    NotConnected,
    TransportError,
)

__all__ = ["BrokerUnreachable", "BrokerUrlError", "ConnectRefused", "ConnectionLost",
           "NoConnack", "NotConnected", "TransportError"]
