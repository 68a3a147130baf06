"""Partition ownership across edge instances: leases in JetStream's
key-value store (leases), fair shares and takeover (ownership), reading the owned partitions
(source: fetch, hand over, fence, acknowledge), and the
encoding of ids into key-value keys (keys). docs/scaling.md, "The NATS cluster".

Imports only :mod:`farmedge.transport`, :mod:`farmedge.contract`,
:mod:`farmedge.config` and :mod:`farmedge.logs` (tests/unit/test_import_rules.py)."""

from .keys import KeyCodingError, decode_token, encode_token, instance_key, lease_key
from .leases import Fenced, Holder, Lease, LeaseError, LeaseLost, LeaseStore
from .ownership import Ownership, fair_share
from .source import Handler, PartitionedSource, PartitionHook

__all__ = [
    "Fenced",
    "Handler",
    "Holder",
    "KeyCodingError",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "LeaseStore",
    "Ownership",
    "PartitionHook",
    "PartitionedSource",
    "decode_token",
    "encode_token",
    "fair_share",
    "instance_key",
    "lease_key",
]
