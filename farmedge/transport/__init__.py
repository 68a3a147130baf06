"""Transport: the MQTT adapter (URL, TLS and credentials, back-off, the
reconnect loop), the edge's source client and the publisher everyone else uses.

Imports only :mod:`farmedge.contract`, :mod:`farmedge.config` and
:mod:`farmedge.logs` (tests/test_import_rules.py)."""
