"""farmedge provision nats-certs: the site's CA and the nodes' certificates,
checked with openssl (tests/integration/test_compose_cluster.py runs a
cluster on them)."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from farmedge.cli import main

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="openssl is not installed")
HOSTS = ("nats-1", "nats-2", "nats-3")


def _verify(folder: Path, host: str, *check: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-CAfile", str(folder / "ca.crt"), *check,
                           str(folder / f"{host}.crt")], capture_output=True, text=True,
                          check=False, timeout=30)


def _text(path: Path) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-text"],
                          capture_output=True, text=True, check=True, timeout=30).stdout


def test_a_ca_and_a_certificate_per_node_for_servers_and_clients(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert main(["provision", "nats-certs", "--out", str(out)]) == 0
    names = {"ca.crt", "ca.key", *(f"{h}.{e}" for h in HOSTS for e in ("crt", "key"))}
    assert {p.name for p in out.iterdir()} == names  # nothing else, no leftovers
    assert set(capsys.readouterr().out.split()) == {str(out / n) for n in names}
    for p in out.iterdir():
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o600 if p.suffix == ".key" else 0o644), p
    for h in HOSTS:
        # Servers to clients and to the other nodes; clients on the routes.
        for check in (("-verify_hostname", h, "-purpose", "sslserver"),
                      ("-verify_hostname", "localhost", "-purpose", "sslserver"),
                      ("-verify_ip", "127.0.0.1", "-purpose", "sslserver"),
                      ("-verify_hostname", h, "-purpose", "sslclient")):
            ran = _verify(out, h, *check)
            assert ran.returncode == 0, (h, check, ran.stdout + ran.stderr)
        assert _verify(out, h, "-verify_hostname", "nats-9").returncode != 0
    assert "CA:TRUE" in _text(out / "ca.crt") and "CA:FALSE" in _text(out / "nats-1.crt")


def test_the_ca_is_kept_unless_forced_and_the_nodes_signed_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert main(["provision", "nats-certs", "--out", str(out), "--hosts", "nats-1"]) == 0
    ca, node = (out / "ca.crt").read_bytes(), (out / "nats-1.crt").read_bytes()
    capsys.readouterr()
    # Again, with a node more and the site's own names.
    assert main(["provision", "nats-certs", "--out", str(out), "--no-localhost",
                 "--hosts", "nats-1,nats-4.example.org,10.0.0.7"]) == 0
    got = capsys.readouterr()
    assert "kept the CA" in got.err and str(out / "ca.crt") not in got.out.split()
    assert (out / "ca.crt").read_bytes() == ca and (out / "nats-1.crt").read_bytes() != node
    assert _verify(out, "nats-4.example.org", "-verify_hostname",
                   "nats-4.example.org").returncode == 0
    assert _verify(out, "10.0.0.7", "-verify_ip", "10.0.0.7").returncode == 0
    assert _verify(out, "nats-1", "-verify_hostname", "localhost").returncode != 0
    # The compose host's address, as the gateways reach its published ports.
    assert main(["provision", "nats-certs", "--out", str(out), "--hosts", "nats-2",
                 "--extra-names", "192.168.1.10,center.example.org"]) == 0
    for check in (("-verify_ip", "192.168.1.10"), ("-verify_hostname", "center.example.org"),
                  ("-verify_hostname", "nats-2"), ("-verify_ip", "127.0.0.1")):
        assert _verify(out, "nats-2", *check).returncode == 0, check
    assert main(["provision", "nats-certs", "--out", str(out), "--force"]) == 0
    assert (out / "ca.crt").read_bytes() != ca
    assert _verify(out, "nats-2", "-verify_hostname", "nats-2").returncode == 0
    # Signed by the old CA: refused by the new one.
    assert _verify(out, "10.0.0.7").returncode != 0


def test_a_ca_without_its_key_is_not_replaced_silently(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    assert main(["provision", "nats-certs", "--out", str(out)]) == 0
    (out / "ca.key").unlink()
    ca = (out / "ca.crt").read_bytes()
    node = (out / "nats-1.crt").read_bytes()
    capsys.readouterr()
    assert main(["provision", "nats-certs", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ca.key is missing" in err and "--force" in err
    assert (out / "ca.crt").read_bytes() == ca and (out / "nats-1.crt").read_bytes() == node


@pytest.mark.parametrize("args", [["--hosts", ""], ["--hosts", "nats-1,nats-1"],
                                  ["--hosts", "nats_1"], ["--hosts", "ca"], ["--hosts", "a b"],
                                  ["--extra-names", "bad name"]])
def test_bad_host_names_are_refused(tmp_path: Path, args: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["provision", "nats-certs", "--out", str(tmp_path / "c"), *args]) == 2
    assert "farmedge provision nats-certs:" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_without_openssl_it_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["provision", "nats-certs", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "openssl command is not installed" in err and "apt-get install openssl" in err
    assert not (tmp_path / "c").exists()
