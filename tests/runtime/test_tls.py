"""The admin API's certificates and the kubeconfig: made, kept, made again, read back."""

from __future__ import annotations

import datetime as _dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from lbcore.errors import ConfigError
from lbcore.runtime import tls
from lbcore.runtime.config import TLSConfig, config_from_mapping, with_overrides


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def names(cert: x509.Certificate) -> set[str]:
    return tls._names_of(cert)


def test_a_ca_and_a_serving_certificate_for_the_names_keys_private(tmp_path: Path):
    cert_file, key_file, ca_pem = tls.generate_certificates(
        tmp_path, tls.serving_names("127.0.0.5", ["192.0.2.4"]))
    cert, ca = load(cert_file), x509.load_pem_x509_certificate(ca_pem)
    assert {"localhost", "127.0.0.1", "::1", "127.0.0.5", "192.0.2.4"} <= names(cert)
    assert cert.issuer == ca.subject and ca_pem == (tmp_path / "ca.crt").read_bytes()
    cert.verify_directly_issued_by(ca)
    for key in (key_file, tmp_path / "ca.key"):
        assert oct(key.stat().st_mode & 0o777) == "0o600"
    # a client that trusts the CA accepts the server's certificate chain
    server = tls.server_context(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca_pem.decode())
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2 and client.verify_mode


def test_certificates_are_kept_and_made_again_only_when_a_name_is_missing(tmp_path: Path):
    first, _, ca_first = tls.generate_certificates(tmp_path, ["localhost", "127.0.0.1"])
    serial = load(first).serial_number
    again, _, ca_again = tls.generate_certificates(tmp_path, ["127.0.0.1"])
    assert load(again).serial_number == serial and ca_again == ca_first
    wider, _, ca_wider = tls.generate_certificates(tmp_path, ["127.0.0.1", "192.0.2.9"])
    assert load(wider).serial_number != serial and "192.0.2.9" in names(load(wider))
    assert ca_wider == ca_first  # the CA stays: clients keep trusting it
    later = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=350)  # within 30 days of expiry
    renewed, _, _ = tls.generate_certificates(tmp_path, ["127.0.0.1"], now=later)
    assert load(renewed).not_valid_after_utc > later + _dt.timedelta(days=300)


def test_an_unspecified_listen_address_is_no_name_of_its_own():
    assert "0.0.0.0" not in tls.serving_names("0.0.0.0")
    assert tls.serving_names("::")[:1] == ["localhost"]


def test_the_kubeconfig_is_written_private_and_read_back(tmp_path: Path):
    path = tls.write_kubeconfig(tmp_path, "https://127.0.0.1:1234", b"PEM", "t0k3n")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert tls.read_kubeconfig(path) == ("https://127.0.0.1:1234", b"PEM", "t0k3n")
    plain = tls.write_kubeconfig(tmp_path, "http://127.0.0.1:1", None, None)
    assert tls.read_kubeconfig(plain) == ("http://127.0.0.1:1", None, None)
    assert tls.read_kubeconfig(tmp_path / "absent") is None


def test_admin_tls_in_the_config_and_on_the_command_line(tmp_path: Path):
    assert config_from_mapping({"admin_tls": "generate"}).admin_tls == TLSConfig()
    assert config_from_mapping({"admin_tls": False}).admin_tls is None
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("y")
    given = config_from_mapping({"admin_tls": {"cert_file": str(cert), "key_file": str(key)}})
    assert given.admin_tls == TLSConfig(cert, key) and given.admin_url.startswith("https://")
    with pytest.raises(ConfigError, match="admin_tls.key_file"):
        config_from_mapping({"admin_tls": {"cert_file": str(cert)}})
    with pytest.raises(ConfigError, match="admin_tls.cert_file.*no such file"):
        config_from_mapping({"admin_tls": {"cert_file": str(tmp_path / "no"), "key_file": "k"}})
    with pytest.raises(ConfigError, match="admin_tls.keyfile"):
        config_from_mapping({"admin_tls": {"keyfile": "k"}})
    base = config_from_mapping({})
    assert with_overrides(base, tls=True).admin_tls == TLSConfig()
    assert with_overrides(base, tls_cert_file=str(cert),
                          tls_key_file=str(key)).admin_tls == TLSConfig(cert, key)
    assert with_overrides(base).admin_tls is None
