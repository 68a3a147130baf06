"""Alert state rows as key-value keys (farmedge/cluster/alertstate.py): any
state key, Chinese ids and the state's own separators included, gives a
valid key that decodes back exactly, under its partition and table."""

from __future__ import annotations

import re

import pytest

from farmedge.cluster.alertstate import TABLES, _parse, row_key
from farmedge.cluster.keys import KeyCodingError

KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


@pytest.mark.parametrize("key", [
    "crops/soil-dry|黑龙江/王家.农场|sensor:gw-1/soil-1",
    "黑龙江/王家.农场|frost|farm:王家.农场",
    "0001781058000.000-00000001",
    "黑龙江/王家.农场/2026-06-10",
    "c1/f/gw-1/s1/soil_moisture",
])
def test_a_row_key_is_valid_and_decodes_back(key: str) -> None:
    for table in TABLES:
        k = row_key(13, table, key)
        assert KV_KEY.fullmatch(k), k
        assert k.count(".") == 3       # prefix, partition, table, one token
        assert _parse(k) == (13, table, key)


def test_keys_that_are_not_alert_rows_are_refused() -> None:
    for bad in ("lease.3", "a.x.states.abc", "a.3.nope.abc", "a.3.states.a=ZZ"):
        with pytest.raises((KeyCodingError, ValueError)):
            _parse(bad)
