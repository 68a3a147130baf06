"""The wire contract's one error root."""

from __future__ import annotations

__all__ = ["ContractError"]


class ContractError(ValueError):
    """Anything the wire contract refuses: an id, a topic, a unit, a value,
    a payload that cannot be decoded or a message that cannot be encoded.

    A ``ValueError`` so that code written before the root existed, which
    caught ``ValueError``, still catches it."""
