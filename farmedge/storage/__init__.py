"""Storage: the InfluxDB schema, the line-protocol encoder, the one writer
(retry, split, partial reject, auth alarm; v1 and v2 APIs) and its spool.

Imports only :mod:`farmedge.contract`, :mod:`farmedge.config` and
:mod:`farmedge.logs` (tests/unit/test_import_rules.py). Errors:
:class:`StorageError` is the root."""

from farmedge.storage.errors import StorageError

__all__ = ["StorageError"]
