"""The rendered rules load into a real kernel, and a chain of partial syncs ends where a full
sync of the same state would (root: each test makes and deletes its own network namespaces)."""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from kernel_snapshots import POD_CIDR, many, port, snap
from lbcore_plugins import netfilter, nftlib
from lbcore_plugins.iptables import IptablesFrontend
from lbcore_plugins.netfilter import CommandRunner, RuleApplyError
from lbcore_plugins.nftables import NftablesFrontend

from lbcore.model.snapshot import EndpointInfo, Snapshot
from lbcore.runtime.interfaces import FrontendUnavailable, RuntimeContext

FRONTENDS = {"iptables": IptablesFrontend, "nftables": NftablesFrontend}


def test_frontends_register_through_the_plugin_manager(monkeypatch):
    from lbcore import plugins

    monkeypatch.setenv("LBCORE_LOAD_PLUGINS", "iptables,nftables")
    plugins.get_plugin_manager.cache_clear()
    try:
        found = plugins.registered("lbcore_register_frontends")
    finally:
        plugins.get_plugin_manager.cache_clear()
    assert found == {"iptables": IptablesFrontend, "nftables": NftablesFrontend}


@pytest.mark.parametrize("kind", sorted(FRONTENDS))
def test_start_names_a_missing_namespace(kind):
    name = f"lbcore-absent-{secrets.token_hex(4)}"
    with pytest.raises(FrontendUnavailable, match=name):
        FRONTENDS[kind]({"netns": name}, RuntimeContext()).start()


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")
    names = [f"lbk-{secrets.token_hex(4)}" for _ in range(2)]
    made = []
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
            made.append(name)
        yield names[0], names[1]
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], timeout=30)


def listing(kind: str, netns: str, backend: str = "auto") -> list[str]:
    """What the kernel holds, as sorted lines (set elements one per line, counters dropped)."""
    if kind == "iptables":
        out = ""
        suffix = "" if backend == "auto" else f"-{backend}"
        for tool in (f"iptables{suffix}-save", f"ip6tables{suffix}-save"):
            out += subprocess.run(["ip", "netns", "exec", netns, tool], capture_output=True, text=True, check=True).stdout
        lines = [line for line in out.splitlines() if not line.startswith("#")]
    else:
        out = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "lbcore"],
                             capture_output=True, text=True, check=True).stdout
        lines = out.replace("elements = {", "\n").replace(",", "\n").splitlines()
    return sorted(line.strip().rstrip("}").strip() for line in lines if line.strip())


def mutate(rng: random.Random, s: Snapshot) -> tuple[Snapshot, frozenset[str]]:
    ports = dict(s.service_ports)
    changed = set()
    for key in rng.sample(sorted(ports), 4):
        sp = ports[key]
        action = rng.choice(["drop", "empty", "delete", "affinity", "add", "nodeport"])
        if action == "delete":
            del ports[key]
        elif action == "empty":
            ports[key] = dataclasses.replace(sp, endpoints=())
        elif action == "drop":
            ports[key] = dataclasses.replace(sp, endpoints=sp.endpoints[1:])
        elif action == "affinity":
            ports[key] = dataclasses.replace(sp, session_affinity="ClientIP", affinity_timeout=rng.choice([60, 600]))
        elif action == "nodeport":
            ports[key] = dataclasses.replace(sp, type="NodePort", node_port=31000 + rng.randrange(500))
        else:
            ports[key] = dataclasses.replace(sp, endpoints=(*sp.endpoints, EndpointInfo(ip="10.250.0.9", port=9)))
        changed.add(sp.service)
    new_key = f"ns/new{rng.randrange(10**6)}:p"
    ports[new_key] = port(new_key.split("/")[1].split(":")[0], f"10.97.0.{s.version}", ["10.244.9.9"], protocol="UDP")
    changed.add(ports[new_key].service)
    return Snapshot(version=s.version + 1, service_ports=ports, node_name=s.node_name), frozenset(changed)


@pytest.mark.parametrize(("kind", "extra"), [
    ("iptables", {}),
    ("iptables", {"backend": "legacy"}),
    ("nftables", {}),
    ("nftables", {"endpoint_selection": "inline"}),
])
def test_partial_syncs_end_where_a_full_sync_of_the_same_state_does(kind, extra, namespaces):
    a, b = namespaces
    if extra.get("backend") == "legacy" and shutil.which("iptables-legacy-restore") is None:
        pytest.skip("iptables-legacy-restore not installed")
    rng = random.Random(7)
    state = many(60, endpoints=3)
    # small transactions for the first full sync, to cover the split path too
    incremental = FRONTENDS[kind](
        {"netns": a, "cluster_cidr": POD_CIDR, "restore_chunk_chains": 40, **extra}, RuntimeContext()
    )
    incremental.start()
    incremental.sync(state, frozenset())
    for round_ in range(4):
        state, changed = mutate(rng, state)
        incremental.sync(state, changed)
        fresh = FRONTENDS[kind]({"netns": b, "cluster_cidr": POD_CIDR, **extra}, RuntimeContext())
        fresh.sync(state, frozenset())
        backend = str(extra.get("backend", "auto"))
        held = listing(kind, a, backend)
        assert any("LBCORE-SVC-" in line or "service-" in line for line in held), held[:5]
        assert held == listing(kind, b, backend), f"round {round_}"
    incremental.stop()
    fresh.stop()


def test_a_full_sync_puts_back_a_removed_jump_rule_and_never_doubles_one(namespaces):
    """The jump rules into lbcore's chains go in with the last transaction of a full sync, for
    those that iptables-save does not show."""
    from lbcore_plugins.iptables import HOOKS, hook_rule

    a, _ = namespaces
    state = many(30, endpoints=2)
    options = {"netns": a, "cluster_cidr": POD_CIDR, "restore_chunk_chains": 20}
    first = IptablesFrontend(options, RuntimeContext())
    first.start()
    first.sync(state, frozenset())
    subprocess.run(["ip", "netns", "exec", a, "iptables", "-t", "nat", "-D", "OUTPUT", "-m", "comment",
                    "--comment", "lbcore service portals", "-j", "LBCORE-SERVICES"], check=True)
    # a new instance takes the rules over with a full sync
    IptablesFrontend(options, RuntimeContext()).sync(state, frozenset())
    saved = subprocess.run(["ip", "netns", "exec", a, "iptables-save"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for _, chain, spec in HOOKS:
        assert saved.count(f"-A {hook_rule(chain, spec)}") == 1, chain
    first.stop()
    assert not [line for line in listing("iptables", a) if "LBCORE" in line]


def saved_chain(netns: str, table: str, chain: str) -> list[str]:
    """The rules of ``chain`` in the order the kernel holds them, without ``-A CHAIN``."""
    out = subprocess.run(["ip", "netns", "exec", netns, "iptables-save", "-t", table], capture_output=True,
                         text=True, check=True).stdout
    return [line.split(" ", 2)[2] for line in out.splitlines() if line.startswith(f"-A {chain} ")]


def test_a_changed_port_edits_the_dispatch_chains_in_place(namespaces):
    """A partial sync that changes one port's dispatch rules deletes and inserts those rules
    (-D, -I after the head) instead of rewriting LBCORE-SERVICES: the kernel ends with the rules a
    full sync writes, the fixed head first and the NodePort jump last."""
    a, b = namespaces
    state = many(40, endpoints=2)
    keys = sorted(state.service_ports)
    ports = dict(state.service_ports)
    ports[keys[3]] = dataclasses.replace(ports[keys[3]], port=81)  # a ClusterIP port changes
    ports[keys[10]] = dataclasses.replace(ports[keys[10]], endpoints=())  # nat rule -> filter REJECT
    del ports[keys[20]]  # a NodePort service goes: its nat and NODEPORTS rules are deleted
    after = Snapshot(version=2, service_ports=ports, node_name=state.node_name)
    changed = frozenset(state.service_ports[keys[i]].service for i in (3, 10, 20))
    options = {"cluster_cidr": POD_CIDR, "node_addresses": ["192.168.5.1"]}
    update = IptablesFrontend(options, RuntimeContext()).render_update(state, after, changed)
    assert ":LBCORE-SERVICES" not in update and ":LBCORE-NODEPORTS" not in update
    assert sum(line.startswith("-D LBCORE-SERVICES ") for line in update.splitlines()) == 3
    incremental = IptablesFrontend({**options, "netns": a}, RuntimeContext())
    incremental.start()
    incremental.sync(state, frozenset())
    incremental.sync(after, changed)
    IptablesFrontend({**options, "netns": b}, RuntimeContext()).sync(after, frozenset())
    for table, chain in (("nat", "LBCORE-SERVICES"), ("nat", "LBCORE-NODEPORTS"), ("filter", "LBCORE-SERVICES")):
        held, fresh = saved_chain(a, table, chain), saved_chain(b, table, chain)
        assert sorted(held) == sorted(fresh), (table, chain)
        if (table, chain) == ("nat", "LBCORE-SERVICES"):
            fixed = [i for i, rule in enumerate(fresh) if rule.endswith(("LBCORE-NODEPORTS", "-j RETURN"))]
            assert [held[i] for i in fixed] == [fresh[i] for i in fixed]  # same places
            assert fixed[-1] == len(held) - 1 and fixed[0] == 0
    assert "--dport 81 -j LBCORE-SVC-" in "\n".join(saved_chain(a, "nat", "LBCORE-SERVICES"))
    incremental.stop()


@pytest.mark.parametrize("selection", ["vmap", "inline", "map"])
@pytest.mark.parametrize("kind", sorted(FRONTENDS))
def test_dual_stack_and_every_option_load_into_the_kernel(kind, namespaces, selection):
    if kind == "iptables" and selection != "vmap":
        pytest.skip("endpoint_selection is an nftables option")
    a, _ = namespaces
    v6 = port("web6", "fd00:96::10", ["fd00:244::2", "fd00:244::3"], session_affinity="ClientIP")
    local = dataclasses.replace(
        port("np", "10.96.0.3", [], type="NodePort", node_port=30080, external_traffic_policy="Local"),
        endpoints=(EndpointInfo(ip="10.244.1.2", port=8080, node_name="node-a"),
                   EndpointInfo(ip="10.244.2.2", port=8080, node_name="node-b", weight=3)),
    )
    s = snap(v6, local, port("empty", "fd00:96::11", [], protocol="UDP"), node_name="node-a")
    options = {"netns": a, "cluster_cidr": [POD_CIDR, "fd00:244::/64"], "masquerade_all": True,
               "node_addresses": ["192.168.77.1", "fd00:77::1"], "endpoint_selection": selection}
    fe = FRONTENDS[kind](options, RuntimeContext())
    fe.start()
    fe.sync(s, frozenset())
    held = "\n".join(listing(kind, a))
    assert "fd00:244::2" in held and "10.244.1.2" in held and "10.244.2.2" in held
    fe.stop()


# ---------------------------------------------------------------------------------------------
# nft scripts through libnftables in this process
# ---------------------------------------------------------------------------------------------


def tables(netns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "tables"],
                          capture_output=True, text=True, check=True).stdout


def test_libnftables_context_changes_only_its_own_namespace(namespaces):
    a, b = namespaces
    try:
        ctx = nftlib.NftContext(a)
    except nftlib.NftUnavailable as exc:
        pytest.skip(str(exc))
    try:
        assert ctx.run("add table inet lbtest\n")[0] == 0
        status, _, error = ctx.run("add chain inet lbtest c\nadd rule inet lbtest c jump nowhere\n")
        assert status != 0 and "No such file or directory" in error
    finally:
        ctx.close()
    assert "lbtest" in tables(a)
    assert "lbtest" not in tables(b)
    assert "lbtest" not in subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert "table inet lbtest" in tables(a) and "chain" not in subprocess.run(
        ["ip", "netns", "exec", a, "nft", "list", "table", "inet", "lbtest"], capture_output=True, text=True
    ).stdout  # the refused script changed nothing


def test_refused_nft_script_raises_with_nfts_message_both_ways(namespaces):
    a, _ = namespaces
    for in_process in (True, False):
        runner = CommandRunner(a)
        runner.in_process = in_process
        with pytest.raises(RuleApplyError, match="No such file or directory"):
            runner.nft("add rule inet nosuch c accept\n")
        runner.close()


def test_without_libnftables_scripts_go_through_the_nft_command(namespaces, monkeypatch):
    a, _ = namespaces
    monkeypatch.setattr(nftlib, "LIBRARY", "libnftables-missing.so.0")
    runner = CommandRunner(a)
    runner.nft("add table inet lbtest\n")
    assert runner.in_process is False
    assert "lbtest" in tables(a)


def test_a_script_longer_than_the_limit_runs_in_the_nft_command(namespaces):
    """A whole large table runs in a child nft, which gives back the memory its parse took; a
    short script runs in the library context."""
    a, _ = namespaces
    runner = CommandRunner(a)
    commands: list[list[str]] = []
    run = runner.run
    runner.run = lambda args, **kw: commands.append(list(args)) or run(args, **kw)  # type: ignore[method-assign]
    elements = ", ".join(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(40_000))
    long_script = f"add table inet lbtest\nadd set inet lbtest s {{ type ipv4_addr; elements = {{ {elements} }} }}\n"
    assert len(long_script) > netfilter.CHILD_SCRIPT_CHARS
    try:
        runner.nft("add table inet lbshort\n")
        assert commands == []
        runner.nft(long_script)
        assert commands == [["nft", "-f", "-"]]
        with pytest.raises(RuleApplyError, match="No such file or directory"):
            runner.nft(long_script.replace("add set inet lbtest s", "add set inet nosuch s"))
    finally:
        runner.close()
    listed = subprocess.run(["ip", "netns", "exec", a, "nft", "list", "set", "inet", "lbtest", "s"],
                            capture_output=True, text=True, check=True).stdout
    assert "10.0.156.63" in listed and "lbshort" in tables(a)


@pytest.mark.parametrize("selection", ["cascade", "inline"])
def test_libnftables_and_the_nft_command_leave_the_same_table(namespaces, selection):
    a, b = namespaces
    rng = random.Random(11)
    state = many(30, endpoints=3)
    fronts = [NftablesFrontend({"netns": ns, "cluster_cidr": POD_CIDR, "endpoint_selection": selection},
                               RuntimeContext()) for ns in (a, b)]
    fronts[1].runner.in_process = False
    for fe in fronts:
        fe.start()
        fe.sync(state, frozenset())
    for _ in range(3):
        state, changed = mutate(rng, state)
        for fe in fronts:
            fe.sync(state, changed)
        assert listing("nftables", a) == listing("nftables", b)
    assert fronts[0].runner._nft is not None or not fronts[0].runner.in_process
    for fe in fronts:
        fe.stop()


def test_deletion_batch_is_all_or_nothing_and_names_the_kernel_error(namespaces):
    a, _ = namespaces
    try:
        ctx = nftlib.NftContext(a)
    except nftlib.NftUnavailable as exc:
        pytest.skip(str(exc))
    try:
        ctx.run("add table inet lbtest\nadd chain inet lbtest free/x__10.0.0.1/80\nadd chain inet lbtest used\n"
                "add chain inet lbtest r\nadd rule inet lbtest r jump used\nadd set inet lbtest s { type ipv4_addr; }\n")
        with pytest.raises(OSError) as refused:
            ctx.delete_unreferenced("inet", "lbtest", ["free/x__10.0.0.1/80", "used"], ["s"])
        assert refused.value.errno == errno.EBUSY
        held = subprocess.run(["ip", "netns", "exec", a, "nft", "list", "table", "inet", "lbtest"],
                              capture_output=True, text=True, check=True).stdout
        assert "free/x__10.0.0.1/80" in held and "set s" in held  # nothing of the batch applied
        ctx.delete_unreferenced("inet", "lbtest", ["free/x__10.0.0.1/80"], ["s"])
        held = subprocess.run(["ip", "netns", "exec", a, "nft", "list", "table", "inet", "lbtest"],
                              capture_output=True, text=True, check=True).stdout
        assert "free" not in held and "set s" not in held and "chain used" in held
    finally:
        ctx.close()


def _recording_frontend(netns: str, options: dict, before: Snapshot,
                        monkeypatch: pytest.MonkeyPatch) -> tuple[NftablesFrontend, list[str]]:
    """An nftables frontend in ``netns`` synced to ``before``, and the nft scripts it runs from
    then on; skips where libnftables cannot delete elements by name."""
    fe = NftablesFrontend({**options, "netns": netns}, RuntimeContext())
    fe.start()
    fe.sync(before, frozenset())
    if not fe.runner.deletes_by_name:
        fe.stop()
        pytest.skip("libnftables not available")
    scripts: list[str] = []
    run = fe.runner.nft
    monkeypatch.setattr(fe.runner, "nft", lambda script: (scripts.append(script), run(script))[1])
    return fe, scripts


def test_endpoint_removal_deletes_its_chain_outside_the_nft_script(namespaces, monkeypatch):
    a, b = namespaces
    before = many(20, endpoints=3)
    key = sorted(before.service_ports)[4]
    sp = before.service_ports[key]
    ports = dict(before.service_ports)
    ports[key] = dataclasses.replace(sp, endpoints=sp.endpoints[1:])
    after = Snapshot(version=2, service_ports=ports, node_name=before.node_name)
    fe, scripts = _recording_frontend(a, {"cluster_cidr": POD_CIDR}, before, monkeypatch)
    fe.sync(after, frozenset({sp.service}))
    assert scripts and not any("delete" in script for script in scripts)
    fresh = NftablesFrontend({"netns": b, "cluster_cidr": POD_CIDR}, RuntimeContext())
    fresh.sync(after, frozenset())
    assert listing("nftables", a) == listing("nftables", b)
    fe.stop()
    fresh.stop()


@pytest.mark.parametrize("selection", ["cascade", "maps"])
def test_removed_elements_go_by_name_before_a_script_that_deletes_nothing(namespaces, monkeypatch, selection):
    """With chains per service, a partial sync that moves a port, empties one and removes a
    NodePort service deletes their map elements by name (nft would read every chain first), and
    its script deletes nothing; ``maps`` keeps them in its one transaction. Either way the
    kernel ends where a full sync does."""
    a, b = namespaces
    before = many(30, endpoints=3)
    keys = sorted(before.service_ports)
    ports = dict(before.service_ports)
    ports[keys[3]] = dataclasses.replace(ports[keys[3]], port=81)
    ports[keys[5]] = dataclasses.replace(ports[keys[5]], endpoints=())
    del ports[keys[10]]
    after = Snapshot(version=2, service_ports=ports, node_name=before.node_name)
    changed = frozenset(before.service_ports[keys[i]].service for i in (3, 5, 10))
    options = {"cluster_cidr": POD_CIDR, "endpoint_selection": selection}
    fe, scripts = _recording_frontend(a, options, before, monkeypatch)
    fe.sync(after, changed)
    assert len(scripts) == 1
    assert ("delete element" in scripts[0]) == (selection == "maps")
    fresh = NftablesFrontend({**options, "netns": b}, RuntimeContext())
    fresh.sync(after, frozenset())
    assert listing("nftables", a) == listing("nftables", b)
    # and back: the elements come again, the moved port's old key is gone for good
    fe.sync(before, changed)
    fresh = NftablesFrontend({**options, "netns": b}, RuntimeContext())
    fresh.sync(before, frozenset())  # a new frontend replaces the table
    assert listing("nftables", a) == listing("nftables", b)
    fe.stop()
    fresh.stop()


def test_a_missing_element_fails_the_sync_and_the_next_one_replaces_the_table(namespaces):
    a, _ = namespaces
    before = many(10, endpoints=2)
    key = sorted(before.service_ports)[2]
    ports = dict(before.service_ports)
    del ports[key]
    after = Snapshot(version=2, service_ports=ports, node_name=before.node_name)
    fe = NftablesFrontend({"netns": a, "cluster_cidr": POD_CIDR}, RuntimeContext())
    fe.start()
    fe.sync(before, frozenset())
    if not fe.runner.deletes_by_name:
        pytest.skip("libnftables not available")
    subprocess.run(["ip", "netns", "exec", a, "nft", "flush", "map", "inet", "lbcore", "service-ips-v4"], check=True)
    with pytest.raises(RuleApplyError, match="deleting 1 elements"):
        fe.sync(after, frozenset({before.service_ports[key].service}))
    fe.sync(after, frozenset())  # the state was dropped: a whole new table
    assert any("service-ips-v4" in line for line in listing("nftables", a))
    assert sum(line.startswith("10.96.") for line in listing("nftables", a)) == len(ports)
    fe.stop()


def test_a_closed_library_context_hands_over_to_the_nft_command(namespaces):
    a, _ = namespaces
    runner = CommandRunner(a)
    runner.nft("add table inet lbtest\n")
    if runner._nft is None:
        pytest.skip("libnftables not available")
    runner._nft.close()  # as in a forked child, where the context's thread does not exist
    runner.nft("add chain inet lbtest c\n")
    assert runner.in_process is False
    assert "chain c" in subprocess.run(["ip", "netns", "exec", a, "nft", "list", "table", "inet", "lbtest"],
                                       capture_output=True, text=True, check=True).stdout


def test_partial_sync_keeps_the_clients_an_affinity_set_remembers(namespaces):
    a, _ = namespaces
    sp = port("web", "10.96.0.1", ["10.244.1.2", "10.244.2.2", "10.244.3.2"], session_affinity="ClientIP")
    fe = NftablesFrontend({"netns": a, "cluster_cidr": POD_CIDR}, RuntimeContext())
    fe.start()
    fe.sync(snap(sp), frozenset())
    sets = subprocess.run(["ip", "netns", "exec", a, "nft", "list", "sets"], capture_output=True, text=True).stdout
    kept = next(line.split()[1] for line in sets.splitlines() if "set affinity" in line and "10.244.2.2" in line)
    subprocess.run(["ip", "netns", "exec", a, "nft", "add", "element", "inet", "lbcore", kept, "{ 10.244.100.2 }"],
                   check=True)
    # the partial script declares the service's sets again so that nft knows them: a no-op
    fe.sync(snap(dataclasses.replace(sp, endpoints=sp.endpoints[:2]), version=2), frozenset({sp.service}))
    held = subprocess.run(["ip", "netns", "exec", a, "nft", "list", "set", "inet", "lbcore", kept],
                          capture_output=True, text=True, check=True).stdout
    assert "10.244.100.2" in held
    fe.stop()
