"""The error root of farmedge.provision."""

from __future__ import annotations

__all__ = ["ProvisionError"]


class ProvisionError(Exception):
    """Provisioning could not be done; ``str()`` says why, for the operator."""
