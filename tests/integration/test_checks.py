"""The check commands check what the programs check at start, with file:line,
warnings that are not errors, and one set of exit codes (0 ok, 1 warnings
with --strict, 2 errors). Real files, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Run first in a child Python: Apprise looks uninstalled there (an edge
# installed without the `alerts` extra).
NO_APPRISE = textwrap.dedent("""
    import sys
    from importlib.abc import MetaPathFinder

    class _Refuse(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "apprise":
                raise ModuleNotFoundError("No module named 'apprise'", name=name)
            return None

    sys.meta_path.insert(0, _Refuse())
    from farmedge.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FARMEDGE_")}


def farmedge(*args: str, cwd: Path, no_apprise: bool = False,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = ([sys.executable, "-c", NO_APPRISE] if no_apprise
           else [sys.executable, "-m", "farmedge"])
    return subprocess.run([*cmd, *args], cwd=cwd, env={**_env(), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=timeout, check=False)


REGISTRY = """\
farms:
  - county: c1
    farm: f1
    profile: {profile}
    contacts:
      - name: Li
        notify: ["{url}"]
    gateways:
      gw-1: {{}}
"""


def edge_files(tmp: Path, *, profile: str = "maize-blacksoil", url: str = "json://127.0.0.1:9/x",
               rules: str | None = None, mqtt_url: str = "mqtt://127.0.0.1:9",
               alerts: bool = True) -> Path:
    (tmp / "registry.yaml").write_text(REGISTRY.format(profile=profile, url=url))
    lines = ['registry = "registry.yaml"', f'data_dir = "{tmp / "data"}"', "",
             "[mqtt]", f'url = "{mqtt_url}"', "", "[http]", "port = 0", "", "[alerts]",
             f"enabled = {'true' if alerts else 'false'}"]
    if rules is not None:
        (tmp / "rules").mkdir(exist_ok=True)
        (tmp / "rules" / "site.yaml").write_text(rules)
        lines.append('rules = ["rules"]')
    cfg = tmp / "edge.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def test_edge_check_config_accepts_a_good_center(tmp_path: Path) -> None:
    edge_files(tmp_path)
    r = farmedge("edge", "check-config", "-c", "edge.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout and "1 gateways" in r.stdout
    assert "profiles" in r.stdout
    assert r.stderr == ""


def test_edge_check_config_refuses_a_broken_rules_file(tmp_path: Path) -> None:
    edge_files(tmp_path, rules="profiles:\n  mine:\n    rulez: []\n")
    r = farmedge("edge", "check-config", "-c", "edge.toml", cwd=tmp_path)
    assert r.returncode == 2, r.stdout
    assert "rules/site.yaml:3: profiles.mine.rulez: unknown key, did you mean rules?" in r.stderr
    assert "configuration OK" not in r.stdout


def test_edge_check_config_and_run_name_the_registry_line_of_an_unknown_profile(
        tmp_path: Path) -> None:
    edge_files(tmp_path, profile="maize-tset")
    for cmd in ("check-config", "run"):
        r = farmedge("edge", cmd, "-c", "edge.toml", cwd=tmp_path)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert "registry.yaml:4: farm c1/f1: profile 'maize-tset' is not defined" in r.stderr, cmd


def test_edge_check_config_refuses_an_unknown_notifier_scheme(tmp_path: Path) -> None:
    edge_files(tmp_path, url="smsnosuch://key@host/123")
    r = farmedge("edge", "check-config", "-c", "edge.toml", cwd=tmp_path)
    assert r.returncode == 2
    assert "registry.yaml:7: farm c1/f1 contact Li: notify URL with scheme 'smsnosuch'" \
        in r.stderr
    assert "key@host" not in r.stderr  # the URL may hold a secret: only its scheme is shown


def test_edge_refuses_to_start_with_alerts_on_and_no_apprise(tmp_path: Path) -> None:
    """Installed without the `alerts` extra: `edge run` stops at once (exit 2)
    and says how to fix it, instead of running and failing every delivery."""
    edge_files(tmp_path)
    r = farmedge("edge", "check-config", "-c", "edge.toml", cwd=tmp_path, no_apprise=True)
    assert r.returncode == 2
    assert "Apprise" in r.stderr and "pip install 'farmedge[alerts]'" in r.stderr
    r = farmedge("edge", "run", "-c", "edge.toml", cwd=tmp_path, no_apprise=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "pip install 'farmedge[alerts]'" in r.stderr
    assert "not started" in r.stderr
    assert not (tmp_path / "data" / "spool.sqlite3").exists()
    # With alerts off the same install is fine.
    edge_files(tmp_path, alerts=False)
    r = farmedge("edge", "check-config", "-c", "edge.toml", cwd=tmp_path, no_apprise=True)
    assert r.returncode == 0, r.stderr
    assert "alerts: off" in r.stdout


def test_warnings_are_not_errors_unless_strict(tmp_path: Path) -> None:
    edge_files(tmp_path, mqtt_url="mqtts://broker.example.org:8883")
    reg = tmp_path / "registry.yaml"
    reg.write_text(reg.read_text() + "  - county: c1\n    farm: f2\n")
    r = farmedge("edge", "check-config", "-c", "edge.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: edge.toml:5: [mqtt] url 'mqtts://broker.example.org:8883': the host is " \
           "a placeholder" in r.stderr
    assert "warning: registry.yaml:10: farm c1/f2 has no contacts" in r.stderr
    r = farmedge("edge", "check-config", "--strict", "-c", "edge.toml", cwd=tmp_path)
    assert r.returncode == 1


GATEWAY = """\
county = "c1"
farm = "f1"
gateway = "gw-1"
data_dir = "{data}"

[mqtt]
url = "{url}"
password = "{password}"
"""


def test_gateway_check_config_warns_about_no_sensors_and_placeholders(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(GATEWAY.format(data=tmp_path, url="mqtts://broker.example.org:8883",
                                  password="change-me"))
    r = farmedge("gateway", "check-config", "-c", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "0 sensors" in r.stdout
    assert "no [[sensors]]" in r.stderr
    assert f"{cfg}:7: [mqtt] url 'mqtts://broker.example.org:8883': the host is a placeholder" \
        in r.stderr
    assert f"{cfg}:8: [mqtt] password is a placeholder" in r.stderr
    r = farmedge("gateway", "check-config", "--strict", "-c", str(cfg), cwd=tmp_path)
    assert r.returncode == 1


def test_gateway_errors_speak_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(GATEWAY.format(data=tmp_path, url="mqtt://10.0.0.1", password="x7Gq")
                   + '\n[htpp]\nport = 1\n\n[[sensors]]\nid = "soil-1"\ndriver = "simulatd"\n'
                   '\n[[sensors]]\nid = "soil-2"\ndriver = "simulated"\nsed = 1\n')
    r = farmedge("gateway", "check-config", "-c", str(cfg), cwd=tmp_path)
    assert r.returncode == 2
    assert (f"{cfg}:15: [[sensors]] entry 1: unknown driver 'simulatd' (did you mean "
            "'simulated'?); known: simulated, modbus_rtu, modbus_tcp, ads1115, ds18b20, rfid"
            in r.stderr)
    assert f"{cfg}:20: [[sensors]] entry 2: sed: unknown key, did you mean seed?" in r.stderr
    assert f"{cfg}:10: unknown section [htpp] (sections: [mqtt]," in r.stderr
    assert "Input tag" not in r.stderr
    # The agent refuses the same file, with the same words.
    run = farmedge("gateway", "run", "-c", str(cfg), cwd=tmp_path)
    assert run.returncode == 2 and "unknown driver 'simulatd'" in run.stderr


def test_a_misspelt_edge_section_gets_a_suggestion(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text("[htpp]\nport = 8081\n\n[mqtt]\nurll = \"mqtt://a\"\n")
    r = farmedge("edge", "check-config", "-c", str(cfg), cwd=tmp_path)
    assert r.returncode == 2
    assert f"{cfg}:1: unknown section [htpp], did you mean [http]?" in r.stderr
    assert f"{cfg}:5: [mqtt] urll: unknown key, did you mean url?" in r.stderr


@pytest.mark.parametrize("command", [("edge", "check-config"), ("gateway", "check-config"),
                                     ("alerts", "check")])
def test_every_check_command_documents_the_same_exit_codes(command: tuple[str, ...]) -> None:
    r = farmedge(*command, "--help", cwd=ROOT)
    assert r.returncode == 0
    assert "exit status:" in r.stdout
    assert "2  errors: the program would refuse to start" in r.stdout
    table = (ROOT / "docs" / "checks.md").read_text()
    assert "| 2 |" in table and "| 1 |" in table and "| 0 |" in table


def test_alerts_check_exits_like_check_config(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("profiles:\n  x:\n    rulez: []\n")
    r = farmedge("alerts", "check", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 2
    (tmp_path / "registry.yaml").write_text(REGISTRY.format(profile="maize-tset",
                                                            url="json://127.0.0.1:9/x"))
    r = farmedge("alerts", "check", "--registry", "registry.yaml", cwd=tmp_path)
    assert r.returncode == 2
    assert "registry.yaml:4: farm c1/f1: profile 'maize-tset' is not defined" in r.stderr


def test_gateway_run_logs_what_check_config_warns_about(tmp_path: Path) -> None:
    """Warnings do not stop the agent; they go to its log as config.warning."""
    import json
    import signal

    from tests.support import eventually

    cfg = tmp_path / "gateway.toml"
    cfg.write_text('log_format = "json"\n'
                   + GATEWAY.format(data=tmp_path / "data", url="mqtt://127.0.0.1:9",
                                    password="change-me")
                   + '\n[clock]\nsource = "trust"\n')
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "farmedge", "gateway", "run", "-c",
                                 str(cfg)], cwd=tmp_path, env={**_env(), "PYTHONPATH": str(ROOT)},
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            def warned() -> list[dict[str, str]]:
                assert proc.poll() is None, log.read_text()
                lines = [json.loads(ln) for ln in log.read_text().splitlines()
                         if ln.startswith("{")]
                return [ln for ln in lines if ln.get("event") == "config.warning"]

            found = eventually(lambda: len(warned()) >= 2 and warned(), timeout=30,
                               what="the config warnings in the agent's log")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    text = " ".join(w["warning"] for w in found)
    assert "no [[sensors]]" in text and "password is a placeholder" in text


@pytest.mark.parametrize(("loc", "said"), [
    (("mqtt", "url"), "[mqtt] url"),
    (("data_dir",), "data_dir"),
    (("sensors", 0, "simulated", "seed"), "[[sensors]] entry 1: seed"),
    (("sensors", 2), "[[sensors]] entry 3"),
    (("mqtt", "keepalive_s"), "[mqtt] keepalive_s"),
])
def test_locations_read_as_toml(loc: tuple[int | str, ...], said: str) -> None:
    from farmedge.config import toml_loc
    from farmedge.edge.settings import EdgeSettings
    from farmedge.gateway.settings import GatewaySettings

    assert toml_loc(GatewaySettings, loc) == said
    assert toml_loc(EdgeSettings, ("mqtt", "topics", 1)) == "[mqtt] topics item 2"


@pytest.mark.parametrize(("extra", "said"), [
    ("      gw-1:\n        interval_s: 60\n",
     "registry.yaml:10: gw-1: listed twice in the same mapping"),
    ("  - county: c1\n    farm: f1\n    gateways:\n      gw-2: {}\n",
     "farm c1/f1 is listed twice (farms entries 1 and 2)"),
])
def test_edge_check_config_and_run_refuse_a_registry_listing_something_twice(
        tmp_path: Path, extra: str, said: str) -> None:
    """YAML keeps the last of two equal keys silently (the gateway's first
    entry would be lost), and a farm listed twice splits its gateways while
    its alerts reach the first entry's contacts only."""
    edge_files(tmp_path)
    reg = tmp_path / "registry.yaml"
    reg.write_text(reg.read_text() + extra)
    for cmd in ("check-config", "run"):
        r = farmedge("edge", cmd, "-c", "edge.toml", cwd=tmp_path)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert said in r.stderr, (cmd, r.stderr)


def test_a_registry_alias_bomb_is_checked_quickly(tmp_path: Path) -> None:
    """Anchors and aliases nesting 9**9 items: refused in seconds, not hung."""
    edge_files(tmp_path)
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "registry.yaml").write_text("\n".join(lines) + "\nfarms: *a8\n")
    r = farmedge("edge", "check-config", "-c", "edge.toml", cwd=tmp_path, timeout=30)
    assert r.returncode == 2, r.stdout
    assert "registry.yaml:1: a0: unknown key" in r.stderr


def test_ids_that_differ_only_in_width_or_case_are_a_warning(tmp_path: Path) -> None:
    edge_files(tmp_path, alerts=False)
    reg = tmp_path / "registry.yaml"
    reg.write_text(reg.read_text() + "      gw-１: {}\n      GW-2: {}\n      gw-2: {}\n"
                   "  - county: c1\n    farm: F1\n")
    r = farmedge("edge", "check-config", "-c", "edge.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert ("warning: registry.yaml:10: gateway of c1/f1 'gw-１' and 'gw-1' differ only in "
            "width or case") in r.stderr
    assert "warning: registry.yaml:12: gateway of c1/f1 'gw-2' and 'GW-2'" in r.stderr
    assert "warning: registry.yaml:14: farm of county c1 'F1' and 'f1'" in r.stderr
    r = farmedge("edge", "check-config", "--strict", "-c", "edge.toml", cwd=tmp_path)
    assert r.returncode == 1
