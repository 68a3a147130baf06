"""[source] nats_ca_file: the CA the edge verifies the cluster's
certificates with (tests/integration/test_nats_trust.py runs it on a real
cluster with TLS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from farmedge.transport import nats as tn
from farmedge.transport.nats_settings import SourceSection


async def test_a_missing_ca_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = SourceSection(kind="nats", nats_urls=["tls://127.0.0.1:1"],
                        nats_ca_file=tmp_path / "none.crt")
    with pytest.raises(tn.NatsTransportError, match=r"\[source\] nats_ca_file"):
        await tn.connect(cfg, "test")


def test_the_ca_file_is_settable_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from farmedge.edge.settings import EdgeSettings

    monkeypatch.setenv("FARMEDGE_SOURCE_NATS_CA_FILE", "/etc/farmedge/nats-ca.crt")
    assert EdgeSettings().source.nats_ca_file == Path("/etc/farmedge/nats-ca.crt")
