"""HTTPS for the admin API, and the kubeconfig that reaches it.

kubectl sends a bearer token only over TLS, so a daemon whose writes need a token serves its
admin API over HTTPS (``admin_tls`` in the config):

- given a certificate and its key (``cert_file``, ``key_file``; ``ca_file`` is the CA clients
  are told to trust, else the certificate itself, as for a self-signed one), it serves those;
- ``generate``: it makes, in the data directory, a CA (``ca.crt``, ``ca.key``, EC P-256, ten
  years, kept across restarts) and a serving certificate signed by it (``tls.crt``,
  ``tls.key``, one year) whose subject alternative names are ``localhost``, the host name,
  ``127.0.0.1``, ``::1``, the listen address and the node addresses; the serving certificate
  is made again when one of these names is missing from it or it expires within 30 days.

:func:`write_kubeconfig` writes ``DATA_DIR/kubeconfig`` (mode 0600: it holds the token) with
the server's URL, the CA (``certificate-authority-data``) and the token, one cluster, user and
context named ``lbcore``; ``KUBECONFIG=DATA_DIR/kubeconfig kubectl ...`` and ``lbcore`` itself
use it. Keys are written mode 0600. Certificates are made with the ``cryptography`` package;
:func:`self_signed` makes the self-signed ones tests and benchmarks serve.
"""

from __future__ import annotations

import base64
import datetime as _dt
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVING_CERT = "tls.crt"
SERVING_KEY = "tls.key"
KUBECONFIG = "kubeconfig"
CONTEXT = "lbcore"
RENEW_BEFORE = _dt.timedelta(days=30)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only, replacing it at once."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def serving_names(host: str, extra: Iterable[str] = ()) -> list[str]:
    """The names a serving certificate for ``host`` (the listen address) covers: localhost,
    this host's name, the loopback addresses, ``host`` and ``extra`` (an unspecified address,
    0.0.0.0 or ::, stands for none of its own)."""
    names = ["localhost", socket.gethostname().lower(), "127.0.0.1", "::1", host, *extra]
    out: list[str] = []
    for name in names:
        if name and name not in ("0.0.0.0", "::") and name not in out:
            out.append(name)
    return out


def _san(names: Iterable[str]) -> Any:
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _names_of(cert: Any) -> set[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName))


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _ca(data_dir: Path, now: _dt.datetime) -> tuple[Any, Any]:
    """The data directory's CA (certificate, key), made when absent."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    cert_path, key_path = data_dir / CA_CERT, data_dir / CA_KEY
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if cert.not_valid_after_utc > now + RENEW_BEFORE:
            return cert, key
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lbcore-ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(_cert_pem(cert))
    return cert, key


def self_signed(hosts: Sequence[str], days: int = 1,
                now: _dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 certificate (PEM) whose subject is ``hosts[0]`` and whose
    alternative names are ``hosts``, valid from a day before ``now`` to ``days`` after, and its
    key (PEM, PKCS#8): what tests and benchmarks serve over TLS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = now or _dt.datetime.now(_dt.UTC)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(_san(hosts), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def generate_certificates(data_dir: Path, names: Iterable[str],
                          now: _dt.datetime | None = None) -> tuple[Path, Path, bytes]:
    """The serving certificate and key files in ``data_dir`` for ``names`` (made or made again
    as the module says), and the CA certificate (PEM) that signs them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or _dt.datetime.now(_dt.UTC)
    ca_cert, ca_key = _ca(data_dir, now)
    wanted = list(names)
    cert_path, key_path = data_dir / SERVING_CERT, data_dir / SERVING_KEY
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if (set(wanted) <= _names_of(cert) and cert.issuer == ca_cert.subject
                and cert.not_valid_after_utc > now + RENEW_BEFORE):
            return cert_path, key_path, _cert_pem(ca_cert)
    key = _new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lbcore")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=365))
        .add_extension(_san(wanted), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(_cert_pem(cert))
    return cert_path, key_path, _cert_pem(ca_cert)


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The server side of TLS 1.2 and later with this certificate and key.

    :raises ssl.SSLError, OSError: the files cannot be read or do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


def kubeconfig(server: str, ca_pem: bytes | None, token: str | None) -> dict[str, Any]:
    """A kubeconfig with one cluster, user and context, all named ``lbcore``."""
    cluster: dict[str, Any] = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    user: dict[str, Any] = {"token": token} if token else {}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": cluster}],
        "users": [{"name": CONTEXT, "user": user}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT}}],
        "current-context": CONTEXT,
        "preferences": {},
    }


def write_kubeconfig(data_dir: Path, server: str, ca_pem: bytes | None,
                     token: str | None) -> Path:
    """Write ``data_dir/kubeconfig`` (mode 0600) and return its path."""
    path = data_dir / KUBECONFIG
    _write_private(path, yaml.safe_dump(kubeconfig(server, ca_pem, token),
                                        sort_keys=False).encode())
    return path


def read_kubeconfig(path: Path) -> tuple[str, bytes | None, str | None] | None:
    """(server, CA PEM, token) of the current context of the kubeconfig at ``path``; None when
    there is no such file or it has no cluster to name."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(doc, dict):
        return None

    def named(section: str, name: Any) -> dict[str, Any]:
        for entry in doc.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                return dict(entry.get(section[:-1]) or {})
        return {}

    context = named("contexts", doc.get("current-context"))
    cluster, user = named("clusters", context.get("cluster")), named("users", context.get("user"))
    if not cluster.get("server"):
        return None
    ca = cluster.get("certificate-authority-data")
    return (str(cluster["server"]), base64.b64decode(ca) if ca else None,
            str(user["token"]) if user.get("token") else None)
