"""The ``lbcore`` command line: the daemon, kubectl's verbs for the kinds lbcore knows, and tools.

Every command exits 0 on success and 1 with one line on stderr otherwise: an invalid manifest
(each cause listed, as kubectl prints them), an unknown object, a conflict, an unreachable
server or an invalid configuration. No traceback is printed for any of these.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from lbcore import __version__
from lbcore.cli.client import (
    PATCH_CONTENT_TYPES,
    ApiError,
    Client,
    ManifestError,
    UnknownResource,
    Unreachable,
    connect,
    read_manifests,
    resource_for,
)
from lbcore.errors import LbcoreError
from lbcore.model.kinds import ALL_KINDS, KINDS, Kind

DEFAULT_NAMESPACE = "default"


class CommandError(Exception):
    """A failure to report on one line and exit 1."""


def _connection_options() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the command is not reset by the command's own parser.
    common = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    common.add_argument("-n", "--namespace", default=s, help="namespace (default: default)")
    common.add_argument(
        "--server", default=s, help="daemon URL (default: $LBCORE_SERVER, else the local daemon)"
    )
    common.add_argument("--kubeconfig", default=s, help="talk to a real cluster instead")
    common.add_argument("--context", default=s, help="kubeconfig context")
    common.add_argument("--token", default=s, help="bearer token for writes ($LBCORE_TOKEN)")
    return common


def _kinds_help() -> str:
    """``services|pods|endpoints|endpointslices (svc, po, ep)``, from the registry of kinds."""
    short = ", ".join(n for k in ALL_KINDS for n in k.short_names)
    return "|".join(k.plural for k in ALL_KINDS) + f" ({short})"


def build_parser() -> argparse.ArgumentParser:
    common = _connection_options()
    parser = argparse.ArgumentParser(
        prog="lbcore",
        description="Kubernetes-style service load balancing: run the daemon, manage services.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"lbcore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", "-c", help="YAML config file (default: built-in defaults)")
    run.add_argument("--data-dir", help="store, token and admin address directory")
    run.add_argument("--admin-address", help="HOST:PORT of the admin API")
    run.add_argument(
        "--frontend", action="append", default=None, help="frontend to run (repeatable)"
    )
    run.add_argument("--log-format", choices=["text", "json"])
    run.add_argument(
        "--keep-rules-on-exit", action="store_true", default=None, help="leave rules on stop"
    )
    run.add_argument("--tls", action="store_true", default=None,
                     help="serve the admin API over HTTPS, with a CA and certificate generated "
                          "in the data dir")
    run.add_argument("--tls-cert-file", help="serve HTTPS with this certificate (PEM)")
    run.add_argument("--tls-key-file", help="the key of --tls-cert-file (PEM)")

    kubeconfig = commands.add_parser(
        "kubeconfig", help="print the kubeconfig that reaches the local daemon (CA and token)")
    kubeconfig.add_argument("--data-dir", help="the daemon's data dir (default: $LBCORE_DATA_DIR)")

    for verb, text in (("create", "create objects from manifests"), ("apply", "create or update")):
        p = commands.add_parser(verb, help=text, parents=[common])
        p.add_argument("-f", "--filename", action="append", required=True, help="FILE, DIR or -")
        _dry_run_option(p)

    get = commands.add_parser("get", help="list objects", parents=[common])
    get.add_argument("kind", help=_kinds_help())
    get.add_argument("name", nargs="?")
    get.add_argument("-l", "--selector", help="label selector, such as app=web,tier!=db")
    get.add_argument("-o", "--output", choices=["wide", "yaml", "json", "name"])
    get.add_argument("-A", "--all-namespaces", action="store_true")

    describe = commands.add_parser("describe", help="show one service in detail", parents=[common])
    describe.add_argument("kind", help="service (svc) or route")
    describe.add_argument("name")

    delete = commands.add_parser("delete", help="delete objects", parents=[common])
    delete.add_argument("kind", nargs="?")
    delete.add_argument("name", nargs="*")
    delete.add_argument("-f", "--filename", action="append", help="FILE, DIR or -")
    _dry_run_option(delete)

    patch = commands.add_parser("patch", help="patch one object", parents=[common])
    patch.add_argument("kind", help=_kinds_help())
    patch.add_argument("name")
    patch.add_argument("-p", "--patch", required=True, help="the patch, JSON or YAML")
    patch.add_argument("--type", choices=sorted(PATCH_CONTENT_TYPES), default="strategic",
                       help="json (RFC 6902), merge (RFC 7386) or strategic (default)")
    patch.add_argument("--subresource", choices=["status"], help="patch the status instead")
    _dry_run_option(patch)

    commands.add_parser("version", help="print the version")

    rules = commands.add_parser(
        "rules", help="print the kernel rules a frontend would write", parents=[common]
    )
    rules.add_argument("--frontend", required=True, help="iptables or nftables")
    rules.add_argument("--config", "-c", help="config file (node name, addresses, options)")

    demo = commands.add_parser("demo", help="a load balancer on loopback, end to end")
    demo.add_argument("--requests", type=int, default=300)

    commands.add_parser("bench", help="benchmarks of the core (lbcore bench --help)")
    return parser


def _dry_run_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run", choices=["none", "server"], default="none",
        help="server: the server admits the write and answers as if done, storing nothing")


def _dry_run_suffix(args: argparse.Namespace) -> str:
    return " (server dry run)" if _dry_run(args) else ""


def _dry_run(args: argparse.Namespace) -> bool:
    return getattr(args, "dry_run", "none") == "server"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # lbcore.cli.bench parses its own arguments
        return _guard(lambda: cmd_bench(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] | None = COMMANDS.get(args.command or "")
    if command is None:
        parser.print_help()
        return 0
    return _guard(lambda: command(args))


def _guard(run: Callable[[], int]) -> int:
    try:
        return run()
    except (CommandError, LbcoreError, ManifestError, UnknownResource) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except ApiError as exc:
        print(exc.kubectl_message(), file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


def cmd_version(args: argparse.Namespace) -> int:
    print(f"lbcore {__version__}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lbcore.runtime import daemon
    from lbcore.runtime.config import load_config, with_overrides
    from lbcore.runtime.logs import setup_logging

    config = with_overrides(
        load_config(args.config),
        data_dir=args.data_dir,
        admin_address=args.admin_address,
        frontends=args.frontend,
        log_format=args.log_format,
        keep_rules_on_exit=args.keep_rules_on_exit,
        tls=args.tls,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
    )
    setup_logging(config.log_format, config.log_level)
    return daemon.run(config)


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    """Print the kubeconfig ``lbcore run`` wrote into its data dir: its address, the CA of its
    certificate and its token (``KUBECONFIG=<(lbcore kubeconfig) kubectl ...``)."""
    from pathlib import Path

    from lbcore.runtime.config import default_data_dir
    from lbcore.runtime.tls import KUBECONFIG

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    try:
        text = (data_dir / KUBECONFIG).read_text()
    except OSError as exc:
        raise CommandError(
            f"{data_dir / KUBECONFIG}: {exc.strerror or exc}: is `lbcore run` running with "
            "this data dir?") from None
    print(text, end="")
    return 0


def _client(args: argparse.Namespace) -> Client:
    return connect(
        server=getattr(args, "server", None),
        kubeconfig=getattr(args, "kubeconfig", None),
        token=getattr(args, "token", None),
        context=getattr(args, "context", None),
    )


def _namespace_of(obj: dict[str, Any], args: argparse.Namespace) -> str:
    flag = getattr(args, "namespace", None)
    meta = obj.setdefault("metadata", {})
    own = meta.get("namespace")
    if flag and own and own != flag:
        raise CommandError(
            f'the namespace from the provided object "{own}" does not match the namespace '
            f"\"{flag}\". You must pass '--namespace={own}' to perform this operation."
        )
    namespace = own or flag or DEFAULT_NAMESPACE
    meta["namespace"] = namespace
    return namespace


def _ref(obj: dict[str, Any]) -> str:
    kind = str(obj.get("kind", "")).lower()
    return f"{kind}/{(obj.get('metadata') or {}).get('name', '')}"


def _each_manifest(args: argparse.Namespace, action: Callable[[dict[str, Any], str], str]) -> int:
    """Run ``action`` on every object; report each failure on its line and go on, like kubectl."""
    objects = read_manifests(args.filename)
    if not objects:
        raise CommandError("no objects passed to " + args.command)
    failed = 0
    for obj in objects:
        try:
            resource_for(str(obj.get("kind", "")))
            print(action(obj, _namespace_of(obj, args)))
        except ApiError as exc:
            if isinstance(exc, Unreachable):
                raise
            print(exc.kubectl_message(), file=sys.stderr)
            failed += 1
        except (CommandError, UnknownResource) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_create(args: argparse.Namespace) -> int:
    client = _client(args)

    def create(obj: dict[str, Any], namespace: str) -> str:
        client.create(obj, namespace, _dry_run(args))
        return f"{_ref(obj)} created{_dry_run_suffix(args)}"

    return _each_manifest(args, create)


def cmd_apply(args: argparse.Namespace) -> int:
    client = _client(args)

    def apply(obj: dict[str, Any], namespace: str) -> str:
        outcome, _ = client.apply(obj, namespace, _dry_run(args))
        return f"{_ref(obj)} {outcome}{_dry_run_suffix(args)}"

    return _each_manifest(args, apply)


def cmd_delete(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.filename:
        if args.kind:
            raise CommandError("delete: give either -f FILE or KIND NAME, not both")

        def delete(obj: dict[str, Any], namespace: str) -> str:
            resource = resource_for(str(obj.get("kind", "")))
            client.delete(resource, namespace, obj["metadata"].get("name", ""), _dry_run(args))
            return (f'{resource.kind.lower()} "{obj["metadata"].get("name", "")}" deleted'
                    f"{_dry_run_suffix(args)}")

        return _each_manifest(args, delete)
    if not args.kind or not args.name:
        raise CommandError(
            "delete: give -f FILE, or KIND and NAME (such as: delete svc my-service)"
        )
    resource = resource_for(args.kind)
    namespace = getattr(args, "namespace", None) or DEFAULT_NAMESPACE
    for name in args.name:
        client.delete(resource, namespace, name, _dry_run(args))
        print(f'{resource.kind.lower()} "{name}" deleted{_dry_run_suffix(args)}')
    return 0


def cmd_patch(args: argparse.Namespace) -> int:
    """kubectl's patch: a JSON, merge or strategic merge patch of one object or its status."""
    resource = resource_for(args.kind)
    try:
        patch = yaml.safe_load(args.patch)
    except yaml.YAMLError as exc:
        raise CommandError(f"--patch: not JSON or YAML: {' '.join(str(exc).split())}") from None
    if args.type == "json" and not isinstance(patch, list):
        raise CommandError("--patch: a JSON patch (--type=json) is a list of operations")
    if args.type != "json" and not isinstance(patch, dict):
        raise CommandError(f"--patch: a {args.type} patch is an object")
    namespace = getattr(args, "namespace", None) or DEFAULT_NAMESPACE
    client = _client(args)
    # As kubectl: the object is read first, so a patch that changed nothing says so.
    before = client.get(resource, namespace, args.name)["metadata"].get("resourceVersion")
    after = client.patch(resource, namespace, args.name, patch, args.type, args.subresource,
                         _dry_run(args))["metadata"].get("resourceVersion")
    outcome = "patched" if after != before or _dry_run(args) else "patched (no change)"
    print(f"{resource.kind.lower()}/{args.name} {outcome}{_dry_run_suffix(args)}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    client = _client(args)
    resource = resource_for(args.kind)
    namespace = (
        None if args.all_namespaces else (getattr(args, "namespace", None) or DEFAULT_NAMESPACE)
    )
    if args.name:
        items = [client.get(resource, namespace or DEFAULT_NAMESPACE, args.name)]
    else:
        items = client.list(resource, namespace, args.selector)
    if args.output == "json" or args.output == "yaml":
        doc: Any = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}
        if args.output == "json":
            print(json.dumps(doc, indent=2))
        else:
            print(yaml.safe_dump(doc, sort_keys=False), end="")
        return 0
    if args.output == "name":
        for item in items:
            print(f"{resource.kind.lower()}/{item['metadata']['name']}")
        return 0
    if not items:
        where = "any namespace" if namespace is None else f"{namespace} namespace"
        print(f"No resources found in {where}.", file=sys.stderr)
        return 0
    print(format_table(resource, items, wide=args.output == "wide", namespaces=namespace is None))
    return 0


def format_table(resource: Kind, items: list[Any], wide: bool, namespaces: bool) -> str:
    """kubectl's table for ``items`` (:mod:`lbcore.model.tables`, the admin API's own), with
    NAMESPACE first for -A."""
    from lbcore.model.tables import render

    return render(resource.kind, items, wide=wide, namespaces=namespaces).rstrip("\n")


def _service_table(client: Client, namespace: str | None) -> Any:
    """A ServiceTable(allocate=False) filled with everything the server holds."""
    from lbcore.model.service_table import ServiceTable

    table = ServiceTable(allocate=False)
    for kind in KINDS:
        for item in client.list(kind, namespace):
            table.apply(item)
    return table


def cmd_describe(args: argparse.Namespace) -> int:
    """kubectl's describe: the service and its EndpointSlices, as the server holds them."""
    from lbcore.model.describe import describe_service
    from lbcore.model.objects import SERVICE_NAME_LABEL, EndpointSlice, Service

    resource = resource_for(args.kind)
    if resource.kind == "Route":
        return _describe_route(args, resource)
    if resource.kind != "Service":
        raise CommandError(f"describe: only services and routes are described, not {args.kind}")
    client = _client(args)
    namespace = getattr(args, "namespace", None) or DEFAULT_NAMESPACE
    service = Service.from_server(client.get(resource, namespace, args.name))
    selector = f"{SERVICE_NAME_LABEL}={args.name}"
    slices = [EndpointSlice.from_server(item)
              for item in client.list(resource_for("EndpointSlice"), namespace, selector)]
    slices.sort(key=lambda sl: sl.name)
    print(describe_service(service, endpoint_slices=slices,
                           events=_events_about(client, service.raw)).rstrip("\n"))
    return 0


def _describe_route(args: argparse.Namespace, resource: Kind) -> int:
    """``oc describe route``: the route, its admission, and each backend's ready endpoints
    (of the port the route targets, or every port)."""
    from lbcore.model.describe import describe_route
    from lbcore.model.objects import SERVICE_NAME_LABEL, EndpointSlice, Route
    from lbcore.model.snapshot import EndpointInfo

    client = _client(args)
    namespace = getattr(args, "namespace", None) or DEFAULT_NAMESPACE
    route = Route.from_server(client.get(resource, namespace, args.name))
    endpoints = {}
    for backend in route.backends:
        slices = [EndpointSlice.from_server(item) for item in client.list(
            resource_for("EndpointSlice"), namespace, f"{SERVICE_NAME_LABEL}={backend.name}")]
        endpoints[backend.name] = [
            EndpointInfo(ep.addresses[0], p.port or 0, ep.ready)
            for sl in slices for p in sl.ports for ep in sl.endpoints
            if ep.addresses and (route.target_port is None or route.target_port in (p.name, p.port))]
    print(describe_route(route, endpoints).rstrip("\n"))
    return 0


def _events_about(client: Client, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Events about ``obj``, found as kubectl describe finds them (a field selector on the
    involved object's kind, name, namespace and uid)."""
    meta = obj.get("metadata") or {}
    selector = ",".join(f"involvedObject.{key}={value}" for key, value in (
        ("kind", obj.get("kind", "")), ("name", meta.get("name", "")),
        ("namespace", meta.get("namespace", "")), ("uid", meta.get("uid", ""))))
    answer = client.transport.request("GET", resource_for("Event").path(meta.get("namespace")),
                                      query={"fieldSelector": selector})
    return list(answer.get("items") or [])


def cmd_rules(args: argparse.Namespace) -> int:
    from lbcore.runtime.config import load_config, resolve_plugins
    from lbcore.runtime.daemon import load_plugins, make_plugin
    from lbcore.runtime.interfaces import RuntimeContext

    config = load_config(args.config)
    sources, frontends = load_plugins()
    if args.frontend not in frontends:
        names = ", ".join(sorted(frontends)) or "none installed"
        raise CommandError(f'--frontend: unknown frontend "{args.frontend}"; available: {names}')
    config = resolve_plugins(config, sources, frontends)
    place, options = next(((f"frontends[{i}]", f.options) for i, f in enumerate(config.frontends or ())
                           if f.name == args.frontend), ("frontends[]", {}))
    context = RuntimeContext(
        node_name=config.node_name,
        node_addresses=config.node_addresses,
        data_dir=config.data_dir,
        service_cidrs=config.service_cidrs,
        node_port_range=config.node_port_range,
    )
    frontend = make_plugin(place, frontends[args.frontend], options, context)
    render = getattr(frontend, "render", None)
    if render is None:
        raise CommandError(f"--frontend: {args.frontend} has no rules to show")
    table = _service_table(_client(args), None)
    snapshot = table.snapshot(config.node_name, config.node_addresses)
    print(render(snapshot).rstrip("\n"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lbcore.cli import demo
    return demo.main(requests=args.requests)


def cmd_bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("lbcore.cli.bench")
    except ModuleNotFoundError as exc:
        if exc.name != "lbcore.cli.bench":
            raise
        raise CommandError("bench: lbcore.cli.bench is not part of this installation") from None
    return int(bench.main(argv) or 0)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "create": cmd_create,
    "apply": cmd_apply,
    "get": cmd_get,
    "describe": cmd_describe,
    "delete": cmd_delete,
    "patch": cmd_patch,
    "kubeconfig": cmd_kubeconfig,
    "version": cmd_version,
    "rules": cmd_rules,
    "demo": cmd_demo,
}

if __name__ == "__main__":
    sys.exit(main())
