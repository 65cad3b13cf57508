"""Type stub of the compiled socket data path (plugins/lbcore_plugins/_proxy_c.pyx)."""

from typing import Any

SPLICE_MODES: dict[str, int]
COUNTERS: tuple[str, ...]
HTTP_COUNTERS: tuple[str, ...]

def pipe_max_size() -> int: ...

class Engine:
    """A pool of worker threads, each an epoll loop relaying TCP connections and UDP flows.

    Picks use an ``lbcore.core.balancers`` Balancer per service port (any algorithm of
    ``lbcore.core.balancers.available()`` that is a compiled Balancer) and, for ClientIP affinity,
    an ``lbcore.AffinityTable``.
    """

    def __init__(
        self,
        workers: int = 2,
        buffer_size: int = 16384,
        splice: str = "auto",
        pipe_size: int = 1048576,
        connect_timeout: float = 5.0,
        idle_timeout: float = 3600.0,
        udp_idle_timeout: float = 30.0,
        retries: int = 2,
        down_time: float = 5.0,
        udp_max_flows: int = 65536,
        udp_max_client_flows: int = 1024,
        server_timeout: float = 60.0,
        eject_after: int = 5,
        max_ejected_share: float = 0.5,
        max_total_connections: int = 0,
    ) -> None: ...
    @property
    def workers(self) -> int: ...
    @property
    def pipe_size(self) -> int: ...
    @property
    def running(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def set_service(
        self,
        key: str,
        endpoints: list[tuple[str, int, int, bool]],
        algorithm: str = "round_robin",
        affinity_timeout: float = 0.0,
        affinity_capacity: int = 65536,
        options: dict[str, Any] | None = None,
        hash_key: str = "client_ip",
    ) -> None: ...
    def remove_service(self, key: str) -> None: ...
    def service_endpoints(self, key: str) -> list[dict[str, Any]]: ...
    def service_info(self, key: str) -> dict[str, Any]: ...
    def _age_affinity_clock(self, key: str, seconds: float) -> None: ...
    def add_listeners(self, specs: list[tuple[str, str, list[int], int]]) -> list[int]: ...
    def add_listener(
        self, key: str, protocol: str, fds: list[int], max_connections: int = 0
    ) -> int: ...
    def remove_listener(self, ident: int) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def configure_http(
        self,
        max_body_bytes: int = 0,
        header_timeout: float = 10.0,
        keepalive_timeout: float = 300.0,
        pool_idle_timeout: float = 30.0,
        pool_max_idle: int = 1024,
    ) -> None: ...
    def set_routes(
        self, hosts: list[dict[str, Any]], default_certificate: tuple[bytes, bytes] | None = None
    ) -> None: ...
    def add_http_listener(
        self,
        fds: list[int],
        https: bool = False,
        port: int = 0,
        redirect_port: int = 443,
        max_connections: int = 0,
        tls_resumption: bool = True,
    ) -> int: ...
    def http_stats(self) -> dict[str, int]: ...
