"""Broker URLs, credentials and TLS: the one parser every MQTT client of
farmedge uses (edge, gateway, alert recorder, simulator, provisioning).

``mqtt://`` and ``tcp://`` are plain TCP, default port 1883; ``mqtts://``
and ``ssl://`` are TLS, default port 8883. A CA file or client certificate
given in the settings also means TLS (never plain TCP for an operator who
configured certificates). ``user:password@`` in the URL is taken when the
settings give none. Any other scheme is a :class:`BrokerUrlError`.

A client given several URLs (the nodes of a broker cluster) goes through
them in turn with :class:`BrokerRing`: the next node after every failed
connect or lost connection, the shared back-off between attempts; a gateway
in an order of its own, so that a fleet spreads over the nodes.

:data:`PROTOCOLS`: the MQTT versions a publisher speaks, "5" (the default:
content-type property, clean start, no session kept) and "3.1.1" (for
brokers that refuse MQTT 5, NATS's MQTT listener among them).
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from farmedge.logs import redact_url

from .errors import BrokerUrlError, TransportError

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

__all__ = ["PLAIN_PORT", "PROTOCOLS", "SCHEMES", "TLS_PORT", "Broker", "BrokerRing", "Protocol",
           "parse_broker_url", "parse_broker_urls"]

#: MQTT protocol versions, as settings spell them.
Protocol = Literal["5", "3.1.1"]
PROTOCOLS: tuple[Protocol, ...] = ("5", "3.1.1")

#: scheme -> TLS
SCHEMES: dict[str, bool] = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}
PLAIN_PORT = 1883
TLS_PORT = 8883
_USAGE = ("mqtt:// (or tcp://) is plain TCP, port 1883 by default; mqtts:// (or ssl://) "
          "is TLS, port 8883 by default")


@dataclass(frozen=True, slots=True)
class Broker:
    """Where a client connects and how it proves who it is."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: The URL as given (it may hold a password: log :attr:`redacted`).
    url: str = field(default="", repr=False)

    @property
    def redacted(self) -> str:
        """The URL for logs and messages, any password replaced by ``***``."""
        return redact_url(self.url) if self.url else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.redacted

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (None for plain TCP): the system's CAs or
        ``ca_file``, hostname checked, the client certificate when given.
        A file that cannot be read is a :class:`TransportError`."""
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file:
                ctx.load_cert_chain(str(self.cert_file),
                                    str(self.key_file) if self.key_file else None)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TransportError(f"TLS set-up for {self.redacted} failed: {exc}") from None
        return ctx

    def configure(self, client: mqtt.Client) -> None:
        """Credentials and TLS onto a paho client."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        ctx = self.ssl_context()
        if ctx is not None:
            client.tls_set_context(ctx)


def parse_broker_url(url: str, *, username: str | None = None, password: str | None = None,
                     ca_file: Path | str | None = None, cert_file: Path | str | None = None,
                     key_file: Path | str | None = None) -> Broker:
    """Parse ``url``; ``username``/``password`` (from the settings) win over
    the URL's. Raises :class:`BrokerUrlError` with a message for the operator."""
    try:
        u = urlsplit(url.strip())
        port = u.port
    except ValueError:
        raise BrokerUrlError(f"{redact_url(url)!r} has an invalid port") from None
    scheme = u.scheme.lower()
    if scheme not in SCHEMES:
        what = f"unknown scheme {scheme + '://'!r}" if scheme else "no scheme"
        raise BrokerUrlError(f"must start with mqtt:// or mqtts:// ({redact_url(url)!r} has "
                             f"{what}); {_USAGE}")
    if port == 0:
        raise BrokerUrlError(f"{redact_url(url)!r} has an invalid port (0)")
    if not u.hostname:
        raise BrokerUrlError(f"{redact_url(url)!r} has no host (mqtt://host[:port])")
    if any(c.isspace() or not c.isprintable() for c in u.hostname):
        raise BrokerUrlError(f"{redact_url(url)!r}: the host has a space or a control character")
    if key_file and not cert_file:
        raise BrokerUrlError("key_file is set without cert_file")
    tls = SCHEMES[scheme] or bool(ca_file or cert_file)
    user = username or (unquote(u.username) if u.username else None)
    pw = password or (unquote(u.password) if u.password else None)
    return Broker(host=u.hostname, port=port or (TLS_PORT if tls else PLAIN_PORT), tls=tls,
                  username=user, password=pw,
                  ca_file=Path(ca_file) if ca_file else None,
                  cert_file=Path(cert_file) if cert_file else None,
                  key_file=Path(key_file) if key_file else None, url=url.strip())


def parse_broker_urls(urls: list[str], *, username: str | None = None,
                      password: str | None = None, ca_file: Path | str | None = None,
                      cert_file: Path | str | None = None,
                      key_file: Path | str | None = None) -> list[Broker]:
    """Several URLs (a cluster's nodes), each parsed by :func:`parse_broker_url`
    with the same credentials and TLS files. An empty list, or a URL given
    twice, is a :class:`BrokerUrlError` naming its position."""
    if not urls:
        raise BrokerUrlError("the list of broker URLs is empty")
    out: list[Broker] = []
    seen: set[tuple[str, int]] = set()
    for i, url in enumerate(urls):
        try:
            b = parse_broker_url(url, username=username, password=password, ca_file=ca_file,
                                 cert_file=cert_file, key_file=key_file)
        except BrokerUrlError as exc:
            if len(urls) == 1:
                raise
            raise BrokerUrlError(f"URL {i + 1} of {len(urls)}: {exc}") from None
        if (b.host, b.port) in seen:
            raise BrokerUrlError(f"URL {i + 1} of {len(urls)} ({b.redacted!r}) names "
                                 f"{b.host}:{b.port} again")
        seen.add((b.host, b.port))
        out.append(b)
    return out


class BrokerRing:
    """The brokers a client tries, in turn: it starts with the first and
    moves to the next (round robin) after every connect that failed and
    every connection that ended, so a client whose node died tries the
    others while the back-off spaces the attempts. With one broker it is
    always that one.

    With a ``key`` (a gateway's client id) "first" and "next" are in an
    order of that key's own, not the listed one: the brokers by the SHA-256
    of the key and the broker's host and port, highest first (rendezvous
    hashing). So a fleet whose gateways all list the same nodes spreads
    evenly over them, each gateway always starting at the same node (its
    own: the same after every restart, which an operator can tell from its
    id); when a node dies its gateways spread over the others rather than
    all moving to the next in the list; and a node added to the list takes
    over only the gateways for which it comes first."""

    def __init__(self, brokers: list[Broker], key: str | None = None) -> None:
        if not brokers:
            raise BrokerUrlError("no broker to connect to")
        self.brokers = list(brokers)
        #: Indexes into ``brokers``, in the order tried.
        self.order = list(range(len(self.brokers)))
        if key is not None:
            self.order.sort(key=lambda i: _weight(key, self.brokers[i]), reverse=True)
        self._pos = 0

    def __len__(self) -> int:
        return len(self.brokers)

    @property
    def index(self) -> int:
        """Index (in the listed brokers) of the one the next attempt goes to."""
        return self.order[self._pos]

    @property
    def current(self) -> Broker:
        return self.brokers[self.index]

    def advance(self) -> Broker:
        """Move to the next broker (after a failure or a loss); returns it."""
        self._pos = (self._pos + 1) % len(self.brokers)
        return self.current

    def where(self) -> str:
        """``i/n`` for the logs: the current broker's place in the list."""
        return f"{self.index + 1}/{len(self.brokers)}"


def _weight(key: str, broker: Broker) -> bytes:
    return hashlib.sha256(f"{key}\n{broker.host}:{broker.port}".encode()).digest()
