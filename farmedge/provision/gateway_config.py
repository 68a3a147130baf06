"""The config file a provisioned gateway gets (``gateway.toml``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

__all__ = ["gateway_config_toml", "gateway_username"]


def gateway_username(county: str, farm: str, gateway: str) -> str:
    """The broker username of a gateway, and its client id: its path."""
    return f"{county}/{farm}/{gateway}"


def _s(value: str) -> str:
    # A TOML basic string: JSON's escapes are valid TOML escapes.
    return json.dumps(value, ensure_ascii=False)


def gateway_config_toml(*, county: str, farm: str, gateway: str, mqtt_url: str,
                        password: str, now: datetime | None = None) -> str:
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%d")
    user = gateway_username(county, farm, gateway)
    return f"""\
## farmedge gateway agent: {user}.
## Written by `farmedge provision gateway` on {when}. Copy it onto the gateway
## as /etc/farmedge/gateway.toml, readable only by the user the agent runs as:
## it holds the gateway's broker password (or move the password to the
## environment, FARMEDGE_MQTT_PASSWORD). Add the sensors ([[sensors]]) and any
## other setting from gateway.example.toml, then check the file with
##   farmedge gateway check-config --config /etc/farmedge/gateway.toml

## Who this gateway is: its topics are farm/v1/{county}/{farm}/{gateway}/telemetry
## and .../status, and the broker lets this account publish nowhere else.
county = {_s(county)}
farm = {_s(farm)}
gateway = {_s(gateway)}

[mqtt]
  ## mqtts:// (TLS, port 8883) for gateways out in the field.
  url = {_s(mqtt_url)}
  ## The broker account is the gateway's path county/farm/gateway, and the
  ## broker accepts it only with this client id (no other client can take
  ## its session, nor it another's).
  username = {_s(user)}
  password = {_s(password)}
  client_id = {_s(user)}
"""
