"""Each part installs only what it uses: the gateway runs without the edge's
libraries (aiohttp, prometheus-client, PyYAML, msgpack, zstandard, Apprise),
and its compact encoder writes the same bytes as msgpack."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farmedge.contract import COMPACT, decode_compact, encode_compact
from farmedge.contract.compact import packb
from farmedge_dev.devservers import MosquittoServer
from tests.gateway_support import Subscriber, write_gateway_toml
from tests.support import eventually

ROOT = Path(__file__).resolve().parents[2]
EDGE_ONLY = ("aiohttp", "prometheus_client", "yaml", "msgpack", "zstandard", "apprise")
EDGE_ONLY_DISTS = {"aiohttp", "prometheus-client", "pyyaml", "msgpack", "zstandard", "apprise"}

# Run in a child Python before anything else: importing an edge-only
# library fails there as if it were not installed.
BLOCKER = textwrap.dedent(f"""
    import sys
    from importlib.abc import MetaPathFinder

    class _Refuse(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {EDGE_ONLY!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, _Refuse())
""")


def _dist(req: str) -> str:
    m = re.match(r"[A-Za-z0-9_.\-]+", req)
    assert m
    return m.group(0).lower().replace("_", "-")


def test_the_gateway_extra_and_the_core_pull_no_edge_only_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gateway = {_dist(r) for r in [*project["dependencies"],
                                  *project["optional-dependencies"]["gateway"]]}
    assert not gateway & EDGE_ONLY_DISTS, gateway & EDGE_ONLY_DISTS
    edge = {_dist(r) for r in project["optional-dependencies"]["edge"]}
    assert {"aiohttp", "prometheus-client", "pyyaml", "msgpack", "zstandard"} <= edge
    assert "apprise" in {_dist(r) for r in project["optional-dependencies"]["alerts"]}


_msgpack_values = st.recursive(
    st.none() | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=300),
    lambda children: st.lists(children, max_size=20),
    max_leaves=60,
)


@settings(max_examples=400, deadline=None)
@given(_msgpack_values)
def test_the_standard_library_packer_writes_what_msgpack_writes(value: object) -> None:
    assert packb(value) == msgpack.packb(value, use_bin_type=True)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 255, 256, 65535, 65536])
def test_packer_length_boundaries(n: int) -> None:
    for value in (["x"] * n, "é" * (n // 2) + "a" * (n % 2)):
        assert packb(value) == msgpack.packb(value, use_bin_type=True)
    with pytest.raises(OverflowError):
        packb(2**64)
    assert math.isinf(msgpack.unpackb(packb(float("inf"))))


def _child(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=ROOT)


def test_blocker_really_blocks() -> None:
    out = _child("import aiohttp")
    assert out.returncode != 0 and "blocked" in out.stderr


def test_every_gateway_module_imports_without_edge_only_packages() -> None:
    out = _child("""
        import importlib, pkgutil, sys
        import farmedge.gateway
        names = [m.name for m in pkgutil.walk_packages(farmedge.gateway.__path__,
                                                       "farmedge.gateway.")]
        for name in names:
            importlib.import_module(name)
        import farmedge.cli
        farmedge.cli.build_parser()
        from farmedge.contract import encode_compact
        encode_compact(gateway="gw-1", seq=1, sent=1, clock="synced", readings=[
            {"sensor": "s", "kind": "soil_moisture", "ts": 1, "value": 2.5, "unit": "%"}])
        print(len(names), "modules")
    """)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[0]) >= 15


def _gateway_toml(path: Path, *, url: str, county: str, data: Path,
                  compression: str = "deflate-dict") -> Path:
    return write_gateway_toml(
        path, url, county, data, uplink={"compression": compression},
        sensors=[{"id": "soil-1", "driver": "simulated", "interval_s": 0.2}])


def test_gateway_check_config_runs_without_edge_only_packages(tmp_path: Path) -> None:
    cfg = _gateway_toml(tmp_path / "gateway.toml", url="mqtt://127.0.0.1:1883",
                        county="c1", data=tmp_path / "data")
    out = _child("import sys; from farmedge.cli import main; sys.exit(main(sys.argv[1:]))",
                 "gateway", "check-config", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "1 sensors" in out.stdout or "1 sensor" in out.stdout


def test_gateway_needing_zstd_says_how_to_get_it(tmp_path: Path) -> None:
    cfg = _gateway_toml(tmp_path / "gateway.toml", url="mqtt://127.0.0.1:1883",
                        county="c1", data=tmp_path / "data", compression="zstd")
    out = _child("import sys; from farmedge.cli import main; sys.exit(main(sys.argv[1:]))",
                 "gateway", "check-config", "--config", str(cfg))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "zstandard" in out.stderr and "deflate-dict" in out.stderr


@pytest.mark.servers
def test_gateway_agent_publishes_without_edge_only_packages(
        tmp_path: Path, mosquitto: MosquittoServer, county: str) -> None:
    """The agent process, with every edge-only library blocked, reads its
    simulated sensor and publishes compact telemetry that the edge side
    decodes."""
    sub = Subscriber(mosquitto.url, county)
    cfg = _gateway_toml(tmp_path / "gateway.toml", url=mosquitto.url, county=county,
                        data=tmp_path / "data")
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKER + "import sys\nfrom farmedge.cli import main\n"
         "sys.exit(main(sys.argv[1:]))", "gateway", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        eventually(lambda: len(sub.readings()) >= 3 or proc.poll() is not None,
                   timeout=60, what="three readings from the gateway")
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert COMPACT in sub.content_types
        assert {r[0] for r in sub.readings()} == {"soil-1"}
    finally:
        sub.close()
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "blocked" not in out


def test_compact_round_trip_uses_the_stdlib_packer() -> None:
    readings = [{"sensor": "soil-1", "kind": "soil_moisture", "ts": 1_763_800_000_000 + i,
                 "value": 20.0 + i / 10, "unit": "%"} for i in range(60)]
    payload = encode_compact(gateway="gw-1", seq=7, sent=1_763_800_001_000, clock="synced",
                             readings=readings, compression="none")
    assert payload[2:] == msgpack.packb(msgpack.unpackb(payload[2:]), use_bin_type=True)
    doc = decode_compact(payload)
    assert [r["value"] for r in doc["readings"]] == [r["value"] for r in readings]


@pytest.fixture(scope="module")
def gateway_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with `pip install '.[gateway]'`, as a Pi
    gets it (from the indexes pip is configured with here)."""
    d = tmp_path_factory.mktemp("gateway-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True, timeout=120)
    r = subprocess.run([str(d / "bin" / "pip"), "install", "-q", f"{ROOT}[gateway]"],
                       capture_output=True, text=True, timeout=600, check=False)
    if r.returncode != 0:
        pytest.fail("pip install '.[gateway]' failed:\n" + r.stdout[-2000:] + r.stderr[-2000:])
    return d


@pytest.mark.slow
@pytest.mark.servers
def test_a_gateway_install_has_no_edge_library_and_runs(
        gateway_venv: Path, tmp_path: Path, mosquitto: MosquittoServer, county: str) -> None:
    freeze = subprocess.run([str(gateway_venv / "bin" / "pip"), "list", "--format=freeze"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    installed = {ln.split("==")[0].lower().replace("_", "-") for ln in freeze.splitlines()}
    assert "farmedge" in installed
    assert not installed & EDGE_ONLY_DISTS, installed & EDGE_ONLY_DISTS
    fe = str(gateway_venv / "bin" / "farmedge")
    cfg = _gateway_toml(tmp_path / "gateway.toml", url=mosquitto.url, county=county,
                        data=tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}
    ok = subprocess.run([fe, "gateway", "check-config", "-c", str(cfg)], capture_output=True,
                        text=True, timeout=60, check=False, env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    # The center's commands say what to install instead of a traceback.
    edge = subprocess.run([fe, "edge", "run"], capture_output=True, text=True, timeout=60,
                          check=False, env=env, cwd=tmp_path)
    assert edge.returncode == 2
    assert "pip install 'farmedge[edge]'" in edge.stderr and "Traceback" not in edge.stderr
    prov = subprocess.run([fe, "provision", "gateway"], capture_output=True, text=True,
                          timeout=60, check=False, env=env, cwd=tmp_path)
    assert prov.returncode == 2 and "pip install 'farmedge[edge]'" in prov.stderr
    # And the agent publishes.
    sub = Subscriber(mosquitto.url, county)
    proc = subprocess.Popen([fe, "gateway", "run", "-c", str(cfg)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        eventually(lambda: len(sub.readings()) >= 3 or proc.poll() is not None,
                   timeout=60, what="three readings from the installed gateway")
        assert proc.poll() is None, proc.communicate()[0][-3000:]
    finally:
        sub.close()
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-3000:]


# ------------------------------------------------------------------ the developer tooling


def test_the_wheels_hold_farmedge_and_the_dev_tooling_apart() -> None:
    """Both wheels built (pip, the project's real metadata): farmedge's holds
    no developer tooling, farmedge-dev's holds it with its commands."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "check-wheels"), "--contents"],
                         capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "holds no developer tooling" in out.stdout


def test_simulate_and_demo_work_from_the_clone_after_bootstrap() -> None:
    """The `farmedge` command scripts/bootstrap installed in .venv finds the
    dev tooling's commands through their entry points."""
    exe = Path(sys.executable).with_name("farmedge")
    assert exe.exists(), f"{exe}: run scripts/bootstrap"
    for cmd in ("simulate", "demo"):
        out = subprocess.run([str(exe), cmd, "--help"], capture_output=True, text=True,
                             timeout=120, check=False, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"usage: farmedge {cmd}"), out.stdout[:200]


def _site_without_dev_tooling(tmp_path: Path) -> Path:
    """This environment's site-packages as it is where farmedge-dev was never
    installed: every entry linked, except farmedge-dev's metadata and the
    path file of its editable install."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    env = tmp_path / "site"
    env.mkdir()
    for entry in site.iterdir():
        if entry.name.startswith(("farmedge_dev", "_editable_impl_farmedge_dev")):
            continue
        (env / entry.name).symlink_to(entry)
    return env


def test_without_the_dev_tooling_simulate_says_how_to_install_it(tmp_path: Path) -> None:
    site = _site_without_dev_tooling(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FARMEDGE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site)])
    code = textwrap.dedent("""
        import importlib.util, sys
        assert importlib.util.find_spec("farmedge_dev") is None, "farmedge_dev is importable"
        from importlib.metadata import entry_points
        assert not list(entry_points(group="farmedge.commands")), "entry points left"
        from farmedge.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    # -S: no site-packages of this environment (whose .pth files would add
    # tools/ back); PYTHONPATH gives farmedge and the linked packages.
    for argv in (["simulate", "--county", "demo"], ["demo"]):
        out = subprocess.run([sys.executable, "-S", "-c", code, *argv], capture_output=True,
                             text=True, timeout=120, check=False, cwd=tmp_path, env=env)
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr
        assert f"farmedge {argv[0]}: the developer tooling (farmedge-dev) is not installed" \
            in out.stderr
        assert "scripts/bootstrap" in out.stderr and "pip install ./tools" in out.stderr
    listed = subprocess.run([sys.executable, "-S", "-c", code, "--help"], capture_output=True,
                            text=True, timeout=120, check=False, cwd=tmp_path, env=env)
    assert "simulate" in listed.stdout and "not installed" in listed.stdout
    gateway = subprocess.run([sys.executable, "-S", "-c", code, "gateway", "--help"],
                             capture_output=True, text=True, timeout=120, check=False,
                             cwd=tmp_path, env=env)
    assert gateway.returncode == 0, gateway.stderr
