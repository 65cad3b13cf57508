"""The config file: defaults, every key's validation, flag overrides, plugin names."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbcore.errors import ConfigError
from lbcore.runtime.config import (
    KEYS,
    Config,
    PluginChoice,
    config_from_mapping,
    load_config,
    resolve_plugins,
    with_overrides,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lbcore.yaml"
SOURCES = {"local": object(), "kubernetes": object()}
FRONTENDS = {"socket": object(), "iptables": object(), "nftables": object(), "nodeport": object()}


def test_absent_file_gives_loopback_defaults_that_need_no_root():
    c = load_config(None)
    assert c.service_cidrs == ("127.10.0.0/16",)
    assert c.admin_address[0] == "127.0.0.1" and c.admin_is_loopback
    assert c.node_port_range == (30000, 32767)
    assert c.source.name == "local"
    assert c.log_format == "text" and c.keep_rules_on_exit is False


def test_default_frontends_serve_cluster_ips_and_node_ports_when_installed_else_none():
    assert resolve_plugins(Config(), SOURCES, FRONTENDS).frontend_names() == ["socket", "nodeport"]
    assert resolve_plugins(Config(), SOURCES, {"socket": 1}).frontend_names() == ["socket"]
    assert resolve_plugins(Config(), SOURCES, {"iptables": 1}).frontend_names() == []


def test_example_config_is_valid_and_documents_every_key():
    text = EXAMPLE.read_text()
    c = load_config(EXAMPLE)
    assert c.path == EXAMPLE
    for key in KEYS:
        assert f"{key}:" in text, f"examples/lbcore.yaml does not document {key}"


def test_full_config_is_read(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        """
source: {name: kubernetes, options: {kubeconfig: /x}}
frontends: [socket, {name: iptables, options: {masquerade_all: true}}]
service_cidr: [10.96.0.0/12, "fd00::/108"]
node_port_range: 31000-31010
node_name: node-1
node_addresses: [127.0.0.1, "::1"]
min_sync_period: 500ms
admin_address: "[::1]:9000"
admin_token: abcdefghijklmnopqrstuvwxyz
data_dir: ~/lb
log_format: JSON
log_level: debug
keep_rules_on_exit: true
event_loop: asyncio
"""
    )
    c = load_config(f)
    assert c.source == PluginChoice("kubernetes", {"kubeconfig": "/x"})
    assert c.frontend_names() == ["socket", "iptables"]
    assert c.frontends[1].options == {"masquerade_all": True}
    assert c.service_cidrs == ("10.96.0.0/12", "fd00::/108")
    assert c.service_cidr == "10.96.0.0/12,fd00::/108"
    assert c.node_port_range == (31000, 31010)
    assert c.node_name == "node-1"
    assert c.node_addresses == ("127.0.0.1", "::1")
    assert c.min_sync_period == pytest.approx(0.5)
    assert c.admin_address == ("::1", 9000) and c.admin_url == "http://[::1]:9000"
    assert c.admin_token == "abcdefghijklmnopqrstuvwxyz"
    assert c.data_dir == Path.home() / "lb"
    assert c.log_format == "json" and c.log_level == "debug"
    assert c.keep_rules_on_exit is True
    assert c.event_loop == "asyncio"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"source": 3}, "source: invalid value 3"),
        ({"source": {"name": "local", "extra": 1}}, "source.extra: unknown key"),
        ({"source": {"name": "bad name"}}, "source.name: invalid value 'bad name'"),
        ({"source": {"name": "local", "options": [1]}}, "source.options: invalid value [1]"),
        ({"frontends": "socket"}, "frontends: invalid value 'socket'"),
        ({"frontends": ["socket", 7]}, "frontends[1]: invalid value 7"),
        (
            {"frontends": ["socket", "socket"]},
            "frontends[1].name: invalid value 'socket': named twice",
        ),
        ({"service_cidr": "10.0.0.1/8"}, "service_cidr: invalid value '10.0.0.1/8'"),
        ({"service_cidr": ["10.0.0.0/8", "11.0.0.0/8"]}, "at most one IPv4 and one IPv6"),
        (
            {"service_cidr": ["10.0.0.0/31"]},
            "service_cidr[0]: invalid value '10.0.0.0/31': too small",
        ),
        ({"node_port_range": "30000"}, "node_port_range: invalid value '30000'"),
        ({"node_port_range": "40000-30000"}, "1 <= first <= last <= 65535"),
        ({"node_port_range": [0, 10]}, "node_port_range: invalid value [0, 10]"),
        ({"node_name": "Not_Valid!"}, "node_name: invalid value 'Not_Valid!'"),
        ({"node_addresses": ["127.0.0.1", "nope"]}, "node_addresses[1]: invalid value 'nope'"),
        ({"min_sync_period": "fast"}, "min_sync_period: invalid value 'fast'"),
        ({"min_sync_period": -1}, "min_sync_period: invalid value -1"),
        ({"min_sync_period": True}, "min_sync_period: invalid value True"),
        ({"admin_address": "127.0.0.1"}, "admin_address: invalid value '127.0.0.1'"),
        ({"admin_address": "example.com:80"}, "host 'example.com' is not an IP address"),
        ({"admin_address": "127.0.0.1:70000"}, "port must be between 0 and 65535"),
        ({"admin_token": "short"}, "admin_token: invalid value '<hidden>'"),
        ({"data_dir": 5}, "data_dir: invalid value 5"),
        ({"log_format": "xml"}, "log_format: invalid value 'xml': must be one of text, json"),
        ({"log_level": "loud"}, "log_level: invalid value 'loud'"),
        ({"keep_rules_on_exit": "yes"}, "keep_rules_on_exit: invalid value 'yes'"),
        ({"event_loop": "trio"},
         "event_loop: invalid value 'trio': must be one of auto, uvloop, asyncio"),
    ],
)
def test_every_key_is_validated_and_the_error_names_it(data, message):
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data)
    assert message in str(info.value)


def test_unknown_frontend_lists_the_available_ones():
    c = config_from_mapping({"frontends": ["socket", "foo"]})
    with pytest.raises(ConfigError) as info:
        resolve_plugins(c, SOURCES, FRONTENDS)
    assert str(info.value) == (
        'frontends[1].name: unknown frontend "foo"; available: iptables, nftables, nodeport, socket'
    )


def test_unknown_source_lists_the_available_ones():
    c = config_from_mapping({"source": "etcd"})
    with pytest.raises(
        ConfigError, match='source.name: unknown source "etcd"; available: kubernetes, local'
    ):
        resolve_plugins(c, SOURCES, FRONTENDS)


def test_flags_override_the_file_and_keep_configured_options():
    c = config_from_mapping(
        {"frontends": [{"name": "iptables", "options": {"a": 1}}], "data_dir": "/a"}
    )
    o = with_overrides(
        c,
        data_dir="/b",
        admin_address="127.0.0.2:0",
        frontends=["socket", "iptables"],
        log_format="json",
    )
    assert o.data_dir == Path("/b")
    assert o.admin_address == ("127.0.0.2", 0)
    assert o.frontends == (PluginChoice("socket", {}), PluginChoice("iptables", {"a": 1}))
    assert o.log_format == "json"
    with pytest.raises(ConfigError, match="--admin-address: invalid value 'nowhere'"):
        with_overrides(c, admin_address="nowhere")


def test_invalid_yaml_and_missing_file_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("frontends: [socket\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- a\n")
    with pytest.raises(ConfigError, match="expected a mapping of keys"):
        load_config(top)


def test_data_dir_default_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LBCORE_DATA_DIR", str(tmp_path / "d"))
    assert Config().data_dir == tmp_path / "d"
    monkeypatch.delenv("LBCORE_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "x"))
    assert Config().data_dir == tmp_path / "x" / "lbcore"
