"""Ids in key-value keys: only [-/_=.a-zA-Z0-9], reversibly."""

from __future__ import annotations

import re
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js import JetStreamContext

from farmedge.cluster import (
    KeyCodingError,
    LeaseStore,
    decode_token,
    encode_token,
    fair_share,
    instance_key,
)
from farmedge.cluster.keys import partition_of_key
from farmedge.transport.nats_settings import SourceSection

KEY_RE = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


@given(st.text(min_size=1, max_size=40))
def test_any_text_encodes_to_a_valid_key_token_and_back(value: str) -> None:
    token = encode_token(value)
    assert KEY_RE.fullmatch(token)
    assert "." not in token
    assert decode_token(token) == value


def test_chinese_and_dotted_ids() -> None:
    assert encode_token("黑龙江") == "=E9=BB=91=E9=BE=99=E6=B1=9F"
    assert encode_token("farm.7") == "farm=2E7"
    assert encode_token("a=b") == "a=3Db"
    assert instance_key("边缘-1") == "instance.=E8=BE=B9=E7=BC=98-1"


@pytest.mark.parametrize("token", ["", "a.b", "=4", "=zz", "=FF", "a b"])
def test_tokens_no_id_encodes_to_are_refused(token: str) -> None:
    with pytest.raises(KeyCodingError):
        decode_token(token)


def test_lease_keys_name_their_partition() -> None:
    assert partition_of_key("lease.12") == 12
    with pytest.raises(KeyCodingError):
        partition_of_key("instance.12")


@pytest.mark.parametrize(("partitions", "instances", "share"),
                         [(16, 1, 16), (16, 3, 6), (8, 3, 3), (8, 2, 4), (2, 5, 1)])
def test_fair_share_is_the_ceiling(partitions: int, instances: int, share: int) -> None:
    assert fair_share(partitions, instances) == share


@pytest.mark.parametrize("name", ["", "edge-\udcff"])
def test_an_instance_no_key_can_hold_is_refused_when_the_store_is_made(name: str) -> None:
    """It raised in the ownership task's first round (an empty name), or
    UnicodeEncodeError there (an undecodable byte of an environment
    variable), which ended the task: no partition owned, nothing said. The
    store touches no server when it is made."""
    with pytest.raises(KeyCodingError):
        LeaseStore(cast(JetStreamContext, object()), SourceSection(kind="nats"), name)
    assert LeaseStore(cast(JetStreamContext, object()), SourceSection(kind="nats"),
                      "边缘-1").instance_key == "instance.=E8=BE=B9=E7=BC=98-1"
