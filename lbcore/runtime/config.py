"""The daemon's configuration: one YAML file, defaults when absent, flags on top.

Loading is in two steps. :func:`load_config` reads and checks the file's shape and every value
(addresses, CIDRs, durations, ranges); :func:`resolve_plugins` then checks the source and
frontend names against the plugins that are installed, so that an unknown name lists the
available ones. Every error is a :class:`~lbcore.errors.ConfigError` naming the key, as in
``frontends[1].name: unknown frontend "foo"; available: iptables, nftables, nodeport, socket``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lbcore.errors import ConfigError

_T = TypeVar("_T")

DEFAULT_ADMIN_PORT = 10257
DEFAULT_ADMIN_ADDRESS = f"127.0.0.1:{DEFAULT_ADMIN_PORT}"
# The daemon's default service CIDR, on loopback: the socket frontend binds its ClusterIPs on
# this machine without root. (Embedders' tables default to kubeadm's 10.96.0.0/12.)
LOOPBACK_SERVICE_CIDR = "127.10.0.0/16"
DEFAULT_NODE_PORT_RANGE = (30000, 32767)
DEFAULT_MIN_SYNC_PERIOD = 0.2
# the frontends of a config without the key (those installed): ClusterIPs and NodePorts, no root
DEFAULT_FRONTENDS = ("socket", "nodeport")
# how often each frontend's canary is checked, and how often every frontend rewrites all its
# rules anyway (kube-proxy's --iptables-sync-period safety net)
DEFAULT_RULES_CHECK_PERIOD = 2.0
DEFAULT_SYNC_PERIOD = 3600.0
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
# the daemon's event loop: uvloop when it is installed (auto), or the one named
EVENT_LOOPS = ("auto", "uvloop", "asyncio")

KEYS = (
    "source",
    "frontends",
    "service_cidr",
    "node_port_range",
    "node_name",
    "node_addresses",
    "min_sync_period",
    "rules_check_period",
    "sync_period",
    "admin_address",
    "admin_token",
    "admin_tls",
    "data_dir",
    "log_format",
    "log_level",
    "keep_rules_on_exit",
    "event_loop",
)


def default_data_dir() -> Path:
    """``$LBCORE_DATA_DIR``, else ``$XDG_DATA_HOME/lbcore``, else ``~/.local/share/lbcore``."""
    env = os.environ.get("LBCORE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "lbcore"


@dataclass(frozen=True)
class PluginChoice:
    """A source or frontend named in the config, with its own options."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TLSConfig:
    """``admin_tls``: HTTPS for the admin API, from a certificate and its key, or (``generate``)
    from a CA and a serving certificate the daemon makes in its data directory."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None  # the CA written into the kubeconfig (given certificates)

    @property
    def generate(self) -> bool:
        return self.cert_file is None


@dataclass(frozen=True)
class Config:
    """A validated configuration. ``frontends`` is ``None`` until resolved: the default list
    depends on the plugins installed (``socket`` and ``nodeport`` when they exist)."""

    source: PluginChoice = field(default_factory=lambda: PluginChoice("local"))
    frontends: tuple[PluginChoice, ...] | None = None
    service_cidrs: tuple[str, ...] = (LOOPBACK_SERVICE_CIDR,)
    node_port_range: tuple[int, int] = DEFAULT_NODE_PORT_RANGE
    node_name: str = field(default_factory=socket.gethostname)
    node_addresses: tuple[str, ...] = ("127.0.0.1",)
    min_sync_period: float = DEFAULT_MIN_SYNC_PERIOD
    rules_check_period: float = DEFAULT_RULES_CHECK_PERIOD
    sync_period: float = DEFAULT_SYNC_PERIOD
    admin_address: tuple[str, int] = ("127.0.0.1", DEFAULT_ADMIN_PORT)
    admin_token: str | None = None
    admin_tls: TLSConfig | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    log_format: str = "text"
    log_level: str = "info"
    keep_rules_on_exit: bool = False
    event_loop: str = "auto"
    path: Path | None = None

    @property
    def service_cidr(self) -> str:
        """The service CIDRs as the store takes them: comma-separated, as kube-apiserver's flag."""
        return ",".join(self.service_cidrs)

    @property
    def admin_url(self) -> str:
        host, port = self.admin_address
        scheme = "https" if self.admin_tls is not None else "http"
        return f"{scheme}://{format_host(host)}:{port}"

    @property
    def admin_is_loopback(self) -> bool:
        return is_loopback(self.admin_address[0])

    def frontend_names(self) -> list[str]:
        return [f.name for f in self.frontends or ()]


# --------------------------------------------------------------------------------------------
# value checks: each takes the key (for the message) and the raw value
# --------------------------------------------------------------------------------------------


def _fail(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{key}: invalid value {value!r}: {why}")


def parse_duration(key: str, value: Any, least: float = 0.0, most: float = 3600.0) -> float:
    """Seconds from a number or a string such as ``"500ms"``, ``"2s"``, ``"1m"``, between
    ``least`` and ``most``."""
    if isinstance(value, bool):
        raise _fail(key, value, "expected a duration such as 1s or 500ms")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
        if not m:
            raise _fail(key, value, "expected a duration such as 1s or 500ms")
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
        seconds = float(m.group(1)) * scale
    else:
        raise _fail(key, value, "expected a duration such as 1s or 500ms")
    if seconds < least or seconds > most:
        raise _fail(key, value, f"must be between {_duration_text(least)} and {_duration_text(most)}")
    return seconds


def option(default: Any, *, least: float | None = None, most: float | None = None,
           choices: Sequence[str] = (), duration: bool = False,
           parse: Callable[[str, Any], Any] | None = None) -> Any:
    """A field of a plugin's options dataclass (see :func:`read_options`): its default, and
    the bounds, the choices, the duration form (``"500ms"``, ``2``) or the ``parse(key, value)``
    its value goes through."""
    meta = {"least": least, "most": most, "choices": tuple(choices), "duration": duration,
            "parse": parse}
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def read_options(schema: type[_T], options: Mapping[str, Any], skip: Sequence[str] = ()) -> _T:
    """A plugin's ``options`` as an instance of its ``schema`` dataclass, every value checked:
    the one place where plugins turn their config mapping into typed settings, with the
    daemon's own checks and messages.

    A value's type is its field's default's (an int is a float too; a list of strings, or one
    string, is a tuple; ``None`` means an optional string); :func:`option` adds bounds, choices,
    durations with units, or a parser. Keys in ``skip`` belong to someone else and are passed
    over. A :class:`ConfigError` names the key and the value (the daemon adds the plugin).
    """
    known = {f.name: f for f in fields(schema)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in options.items():
        if key in skip:
            continue
        spec = known.get(key)
        if spec is None:
            raise ConfigError(f"{key}: unknown option; known: {', '.join(sorted([*known, *skip]))}")
        values[key] = _option_value(key, value, spec)
    return schema(**values)


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string",
               tuple: "a list of strings", dict: "a mapping"}


def _option_value(key: str, value: Any, spec: Any) -> Any:
    meta = spec.metadata
    least, most = meta.get("least"), meta.get("most")
    if meta.get("parse"):
        return meta["parse"](key, value)
    if meta.get("duration"):
        return parse_duration(key, value, least or 0.0, 365 * 86400.0 if most is None else most)
    if meta.get("choices"):
        return parse_choice(key, value, meta["choices"])
    default = spec.default_factory() if spec.default is MISSING else spec.default
    kind = str if default is None else type(default)
    if kind is bool:
        return parse_bool(key, value)
    given = value
    if kind is tuple and isinstance(value, str):
        value = (value,)
    elif kind is tuple and isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        value = tuple(value)
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _fail(key, given, f"expected {_KIND_NAMES.get(kind, kind.__name__)}")
    if least is not None and value < least or most is not None and value > most:
        bound = (f"must be at least {least:g}" if most is None else
                 f"must be at most {most:g}" if least is None else f"must be in {least:g}..{most:g}")
        raise _fail(key, given, bound)
    return value


def _duration_text(seconds: float) -> str:
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= scale and seconds % scale == 0:
            return f"{seconds / scale:g}{unit}"
    return f"{seconds * 1000:g}ms" if seconds else "0s"


def parse_host_port(key: str, value: Any) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``; the host must be an IP address or ``localhost``."""
    if not isinstance(value, str):
        raise _fail(key, value, "expected HOST:PORT")
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value.strip())
    if not m:
        raise _fail(key, value, "expected HOST:PORT, such as 127.0.0.1:10257 or [::1]:10257")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise _fail(key, value, f"host {host!r} is not an IP address") from None
    if not 0 <= port <= 65535:
        raise _fail(key, value, "port must be between 0 and 65535, inclusive")
    return host, port


def parse_port_range(key: str, value: Any) -> tuple[int, int]:
    """``"30000-32767"`` or ``[30000, 32767]``."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
        if not m:
            raise _fail(key, value, "expected FIRST-LAST, such as 30000-32767")
        first, last = int(m.group(1)), int(m.group(2))
    elif (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        first, last = value[0], value[1]
    else:
        raise _fail(key, value, "expected FIRST-LAST, such as 30000-32767")
    if not (1 <= first <= last <= 65535):
        raise _fail(key, value, "ports must satisfy 1 <= first <= last <= 65535")
    return first, last


def parse_cidrs(key: str, value: Any) -> tuple[str, ...]:
    """One CIDR, a comma-separated pair, or a list of at most one IPv4 and one IPv6 CIDR."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise _fail(key, value, f"expected a CIDR such as {LOOPBACK_SERVICE_CIDR}")
    cidrs: list[str] = []
    families: set[int] = set()
    for i, item in enumerate(items):
        where = key if isinstance(value, str) else f"{key}[{i}]"
        if not isinstance(item, str):
            raise _fail(where, item, f"expected a CIDR such as {LOOPBACK_SERVICE_CIDR}")
        try:
            net = ipaddress.ip_network(item.strip(), strict=True)
        except ValueError as exc:
            raise _fail(where, item, str(exc)) from None
        if net.version in families:
            raise _fail(key, value, "at most one IPv4 and one IPv6 CIDR")
        if net.num_addresses < 4:
            raise _fail(where, item, "too small to allocate addresses from")
        families.add(net.version)
        cidrs.append(str(net))
    return tuple(cidrs)


def parse_addresses(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence):
        raise _fail(key, value, "expected a list of IP addresses")
    out = []
    for i, item in enumerate(value):
        try:
            out.append(str(ipaddress.ip_address(str(item).strip())))
        except ValueError:
            raise _fail(f"{key}[{i}]", item, "not an IP address") from None
    return tuple(out)


def parse_choice(key: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise _fail(key, value, f"must be one of {', '.join(choices)}")
    return value.lower()


def parse_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, value, "expected true or false")
    return value


def parse_plugin(key: str, value: Any) -> PluginChoice:
    """``name`` or ``{name: NAME, options: {...}}``."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise _fail(key, value, "expected a name or a mapping with name and options")
    unknown = sorted(set(value) - {"name", "options"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; expected name, options")
    name = value.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise _fail(f"{key}.name", name, "expected a plugin name")
    options = value.get("options") or {}
    if not isinstance(options, Mapping):
        raise _fail(f"{key}.options", options, "expected a mapping")
    return PluginChoice(name, dict(options))


def parse_node_name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(
        r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", value.lower()
    ):
        raise _fail(key, value, "expected a DNS-1123 subdomain such as node-1")
    return value


def parse_tls(key: str, value: Any) -> TLSConfig | None:
    """``admin_tls``: ``generate`` (or ``true``), ``false``, or ``{cert_file, key_file,
    ca_file}`` (``ca_file`` optional); the files must exist."""
    if value is False or value is None:
        return None
    if value is True or value == "generate":
        return TLSConfig()
    if not isinstance(value, Mapping):
        raise _fail(key, value, "expected generate, false, or {cert_file, key_file, ca_file}")
    unknown = sorted(set(value) - {"cert_file", "key_file", "ca_file"})
    if unknown:
        raise _fail(f"{key}.{unknown[0]}", value[unknown[0]],
                    "unknown key; known keys: cert_file, key_file, ca_file")
    files: dict[str, Path | None] = {}
    for name in ("cert_file", "key_file", "ca_file"):
        given = value.get(name)
        if given is None:
            files[name] = None
            continue
        if not isinstance(given, str) or not given:
            raise _fail(f"{key}.{name}", given, "expected a file path")
        path = Path(given).expanduser()
        if not path.is_file():
            raise _fail(f"{key}.{name}", given, "no such file")
        files[name] = path
    if files["cert_file"] is None or files["key_file"] is None:
        missing = "cert_file" if files["cert_file"] is None else "key_file"
        raise _fail(f"{key}.{missing}", None,
                    "a certificate needs its key (cert_file and key_file), or say generate")
    return TLSConfig(files["cert_file"], files["key_file"], files["ca_file"])


def parse_token(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\x21-\x7e]{16,}", value):
        raise _fail(key, "<hidden>", "expected at least 16 printable characters, no spaces")
    return value


# --------------------------------------------------------------------------------------------
# load, override, resolve
# --------------------------------------------------------------------------------------------


def config_from_mapping(data: Mapping[str, Any], path: Path | None = None) -> Config:
    """Validate a mapping (the parsed YAML) into a :class:`Config`; absent keys take defaults."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{path or 'config'}: expected a mapping of keys, got {type(data).__name__}"
        )
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; known keys: {', '.join(KEYS)}")
    values: dict[str, Any] = {"path": path}
    if "source" in data:
        values["source"] = parse_plugin("source", data["source"])
    if "frontends" in data and data["frontends"] is not None:
        raw = data["frontends"]
        if not isinstance(raw, Sequence) or isinstance(raw, str):
            raise _fail("frontends", raw, "expected a list of frontends")
        frontends = tuple(parse_plugin(f"frontends[{i}]", f) for i, f in enumerate(raw))
        seen: set[str] = set()
        for i, f in enumerate(frontends):
            if f.name in seen:
                raise _fail(f"frontends[{i}].name", f.name, "named twice")
            seen.add(f.name)
        values["frontends"] = frontends
    if "service_cidr" in data:
        values["service_cidrs"] = parse_cidrs("service_cidr", data["service_cidr"])
    if "node_port_range" in data:
        values["node_port_range"] = parse_port_range("node_port_range", data["node_port_range"])
    if "node_name" in data:
        values["node_name"] = parse_node_name("node_name", data["node_name"])
    if "node_addresses" in data:
        values["node_addresses"] = parse_addresses("node_addresses", data["node_addresses"])
    if "min_sync_period" in data:
        values["min_sync_period"] = parse_duration("min_sync_period", data["min_sync_period"])
    if "rules_check_period" in data:
        values["rules_check_period"] = parse_duration(
            "rules_check_period", data["rules_check_period"], least=0.1
        )
    if "sync_period" in data:
        values["sync_period"] = parse_duration("sync_period", data["sync_period"], least=1.0,
                                               most=7 * 24 * 3600.0)
    if "admin_address" in data:
        values["admin_address"] = parse_host_port("admin_address", data["admin_address"])
    if data.get("admin_token") is not None:
        values["admin_token"] = parse_token("admin_token", data["admin_token"])
    if "admin_tls" in data:
        values["admin_tls"] = parse_tls("admin_tls", data["admin_tls"])
    if "data_dir" in data:
        if not isinstance(data["data_dir"], str) or not data["data_dir"]:
            raise _fail("data_dir", data["data_dir"], "expected a directory path")
        values["data_dir"] = Path(data["data_dir"]).expanduser()
    if "log_format" in data:
        values["log_format"] = parse_choice("log_format", data["log_format"], LOG_FORMATS)
    if "log_level" in data:
        values["log_level"] = parse_choice("log_level", data["log_level"], LOG_LEVELS)
    if "keep_rules_on_exit" in data:
        values["keep_rules_on_exit"] = parse_bool("keep_rules_on_exit", data["keep_rules_on_exit"])
    if "event_loop" in data:
        values["event_loop"] = parse_choice("event_loop", data["event_loop"], EVENT_LOOPS)
    return Config(**values)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read ``path`` (YAML); ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
    return config_from_mapping(data or {}, path=p)


def with_overrides(
    config: Config,
    *,
    data_dir: str | None = None,
    admin_address: str | None = None,
    frontends: Sequence[str] | None = None,
    log_format: str | None = None,
    keep_rules_on_exit: bool | None = None,
    tls: bool | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
) -> Config:
    """Apply command-line flags on top of the file. ``--frontend`` replaces the list; a name the
    file configured keeps its options. ``--tls`` asks for a generated certificate,
    ``--tls-cert-file`` and ``--tls-key-file`` give one."""
    changes: dict[str, Any] = {}
    if tls_cert_file is not None or tls_key_file is not None:
        files = {"cert_file": tls_cert_file, "key_file": tls_key_file}
        changes["admin_tls"] = parse_tls("--tls", {k: v for k, v in files.items() if v})
    elif tls:
        changes["admin_tls"] = config.admin_tls or TLSConfig()
    if data_dir is not None:
        changes["data_dir"] = Path(data_dir).expanduser()
    if admin_address is not None:
        changes["admin_address"] = parse_host_port("--admin-address", admin_address)
    if frontends:
        configured = {f.name: f for f in config.frontends or ()}
        chosen = []
        for i, name in enumerate(frontends):
            choice = parse_plugin(f"--frontend[{i}]", name)
            chosen.append(configured.get(choice.name, choice))
        changes["frontends"] = tuple(chosen)
    if log_format is not None:
        changes["log_format"] = parse_choice("--log-format", log_format, LOG_FORMATS)
    if keep_rules_on_exit is not None:
        changes["keep_rules_on_exit"] = keep_rules_on_exit
    return replace(config, **changes)


def _unknown(key: str, kind: str, name: str, available: Sequence[str]) -> ConfigError:
    names = ", ".join(sorted(available)) or "none installed"
    return ConfigError(f'{key}: unknown {kind} "{name}"; available: {names}')


def resolve_plugins(
    config: Config, sources: Mapping[str, Any], frontends: Mapping[str, Any]
) -> Config:
    """Check the names against the installed plugins and fill in the default frontends:
    :data:`DEFAULT_FRONTENDS` that are installed, so that what ``get svc`` shows is served
    (ClusterIPs by ``socket``, NodePorts by ``nodeport`` on ``node_addresses``)."""
    if config.source.name not in sources:
        raise _unknown("source.name", "source", config.source.name, list(sources))
    chosen = config.frontends
    if chosen is None:
        chosen = tuple(PluginChoice(name) for name in DEFAULT_FRONTENDS if name in frontends)
    for i, f in enumerate(chosen):
        if f.name not in frontends:
            raise _unknown(f"frontends[{i}].name", "frontend", f.name, list(frontends))
    return replace(config, frontends=tuple(chosen))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
