"""Provisioning gateways and service accounts: the registry entry, the
broker account in Mosquitto's dynamic security plugin (live on a running
broker, or in its file before it starts) and the gateway's config file
(``farmedge provision``; docs/stack.md)."""

from __future__ import annotations

from .broker import check_password, hash_password
from .dynsec import new_password
from .errors import ProvisionError
from .gateway_config import gateway_config_toml
from .registry_edit import add_gateway, remove_gateway

__all__ = [
    "ProvisionError",
    "add_gateway",
    "check_password",
    "gateway_config_toml",
    "hash_password",
    "new_password",
    "remove_gateway",
]
