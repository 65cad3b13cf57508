"""The ``lbcore`` command line: exit codes, kubectl's messages, and each verb against a daemon."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lbcore import __version__

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def lbcore(*args: str, env: dict | None = None, stdin: str | None = None, cwd: Path = ROOT):
    return subprocess.run(
        [sys.executable, "-m", "lbcore", *args],
        capture_output=True, text=True, timeout=60, env=env, input=stdin, cwd=cwd,
    )  # fmt: skip


def cli(*args: str, env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``lbcore.cli.main.main`` in this process (fast), with ``env`` and its output captured."""
    from lbcore.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    stdin_saved = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        sys.stdin = stdin_saved
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_version_flag():
    out = subprocess.run(["lbcore", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"lbcore {__version__}"


def test_version_command():
    out = lbcore("version")
    assert (out.returncode, out.stdout) == (0, f"lbcore {__version__}\n")


def test_help_lists_usage():
    out = subprocess.run([sys.executable, "-m", "lbcore", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "usage: lbcore" in out.stdout


def test_unreachable_server_is_one_line_and_exit_1(tmp_path):
    env = dict(os.environ, LBCORE_DATA_DIR=str(tmp_path))
    out = lbcore("--server", "http://127.0.0.1:1", "get", "svc", env=env)
    assert out.returncode == 1
    assert out.stderr.startswith("The connection to the server 127.0.0.1:1 was refused")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_default_server_comes_from_the_default_data_dir(tmp_path):
    (tmp_path / "admin-address").write_text("http://127.0.0.1:2\n")
    env = dict(os.environ, LBCORE_DATA_DIR=str(tmp_path))
    env.pop("LBCORE_SERVER", None)
    out = lbcore("get", "pods", env=env)
    assert out.returncode == 1 and "server 127.0.0.1:2 was refused" in out.stderr
    env["LBCORE_SERVER"] = "http://127.0.0.1:3"
    out = lbcore("get", "pods", env=env)
    assert "server 127.0.0.1:3 was refused" in out.stderr


def test_missing_and_unparsable_manifests_are_one_line_errors(tmp_path):
    out = lbcore("--server", "http://127.0.0.1:1", "create", "-f", str(tmp_path / "none.yaml"))
    assert out.returncode == 1
    assert out.stderr == f'error: the path "{tmp_path / "none.yaml"}" does not exist\n'
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\nmetadata: {name: [\n")
    out = lbcore("--server", "http://127.0.0.1:1", "apply", "-f", str(bad))
    assert out.returncode == 1 and out.stderr.startswith(f"error: error parsing {bad}: line")
    kindless = tmp_path / "kindless.yaml"
    kindless.write_text("metadata: {name: x}\n")
    out = lbcore("--server", "http://127.0.0.1:1", "create", "-f", str(kindless))
    assert out.stderr == f"error: error validating {kindless}: Object 'Kind' is missing\n"


def test_unknown_resource_type_is_an_error():
    out = lbcore("--server", "http://127.0.0.1:1", "get", "deployments")
    assert out.returncode == 1
    assert out.stderr == 'error: the server doesn\'t have a resource type "deployments"\n'


def test_bench_is_wired_to_lbcore_bench():
    out = lbcore("bench", "--help")
    if importlib.util.find_spec("lbcore.cli.bench") is None:
        assert out.returncode == 1
        assert out.stderr == "error: bench: lbcore.cli.bench is not part of this installation\n"
    else:
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout


# --------------------------------------------------------------------------------------------
# against a running daemon
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """``lbcore run`` with no frontend, found by the CLI through LBCORE_DATA_DIR."""
    tmp = tmp_path_factory.mktemp("cli")
    data_dir = tmp / "data"
    config = tmp / "lbcore.yaml"
    config.write_text(
        yaml.safe_dump({"admin_address": "127.0.0.1:0", "data_dir": str(data_dir), "frontends": []})
    )
    env = dict(os.environ, LBCORE_DATA_DIR=str(data_dir))
    env.pop("LBCORE_SERVER", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbcore", "run", "--config", str(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not (data_dir / "admin-address").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"lbcore run did not start: {proc.communicate()[0]}")
        time.sleep(0.05)
    yield env
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, output


def manifest(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, labels: {{team: {team}}}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: {port}, targetPort: 8080, protocol: TCP}}]
"""


def test_create_get_describe_delete_a_service(daemon, tmp_path):
    f = manifest(tmp_path, "s.yaml", SERVICE.format(name="web", team="a", port=80))
    out = cli("create", "-f", f, env=daemon)
    assert (out.returncode, out.stdout) == (0, "service/web created\n")
    out = cli("get", "svc", env=daemon)
    assert out.returncode == 0
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert any(r.split()[:2] == ["web", "ClusterIP"] and "80/TCP" in r for r in rows)
    obj = json.loads(cli("get", "service", "web", "-o", "json", env=daemon).stdout)
    assert obj["metadata"]["name"] == "web" and obj["spec"]["ports"][0]["port"] == 80
    listed = yaml.safe_load(cli("get", "services", "-o", "yaml", env=daemon).stdout)
    assert listed["kind"] == "List" and "web" in {i["metadata"]["name"] for i in listed["items"]}
    out = cli("describe", "svc", "web", env=daemon)
    assert out.returncode == 0 and out.stdout.startswith("Name:                     web\n")
    out = cli("delete", "svc", "web", env=daemon)
    assert (out.returncode, out.stdout) == (0, 'service "web" deleted\n')
    out = cli("get", "svc", "web", env=daemon)
    assert out.returncode == 1
    assert out.stderr == 'Error from server (NotFound): services "web" not found\n'


def test_invalid_manifest_lists_every_cause_kubectl_style(daemon, tmp_path):
    f = manifest(tmp_path, "bad.yaml", SERVICE.format(name="my-service", team="a", port=70000))
    out = lbcore("create", "-f", f, env=daemon)  # the real entry point: exit status, no traceback
    assert out.returncode == 1
    assert out.stderr == (
        'The Service "my-service" is invalid: spec.ports[0].port: Invalid value: 70000: '
        "must be between 1 and 65535, inclusive\n"
    )
    two = manifest(
        tmp_path,
        "two.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: two}\nspec:\n  ports:\n"
        "  - {port: 0, protocol: TCP}\n  - {port: 81, protocol: FOO, name: b}\n",
    )
    out = cli("create", "-f", two, env=daemon)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert out.stderr.startswith('The Service "two" is invalid: ')
    assert "spec.ports[0].port: Invalid value: 0" in out.stderr
    assert 'spec.ports[1].protocol: Unsupported value: "FOO"' in out.stderr


def test_create_twice_is_a_conflict_and_apply_configures(daemon, tmp_path):
    f = manifest(tmp_path, "s.yaml", SERVICE.format(name="twice", team="a", port=81))
    assert cli("create", "-f", f, env=daemon).returncode == 0
    out = cli("create", "-f", f, env=daemon)
    assert out.returncode == 1
    assert out.stderr == 'Error from server (AlreadyExists): services "twice" already exists\n'
    before = json.loads(cli("get", "svc", "twice", "-o", "json", env=daemon).stdout)
    g = manifest(tmp_path, "s2.yaml", SERVICE.format(name="twice", team="b", port=82))
    out = cli("apply", "-f", g, env=daemon)
    assert (out.returncode, out.stdout) == (0, "service/twice configured\n")
    after = json.loads(cli("get", "svc", "twice", "-o", "json", env=daemon).stdout)
    assert after["spec"]["ports"][0]["port"] == 82 and after["metadata"]["labels"]["team"] == "b"
    assert after["spec"].get("clusterIP") == before["spec"].get("clusterIP")  # kept
    h = manifest(tmp_path, "s3.yaml", SERVICE.format(name="applied", team="b", port=83))
    out = cli("apply", "-f", h, env=daemon)
    assert out.stdout == "service/applied created\n"
    out = cli("delete", "-f", g, "-f", h, env=daemon)
    assert out.stdout == 'service "twice" deleted\nservice "applied" deleted\n'


def test_get_with_label_selector_and_namespace(daemon, tmp_path):
    f = manifest(
        tmp_path,
        "many.yaml",
        SERVICE.format(name="sel-a", team="red", port=90)
        + "---\n"
        + SERVICE.format(name="sel-b", team="blue", port=91),
    )
    out = cli("-n", "team-ns", "create", "-f", f, env=daemon)
    assert out.returncode == 1 and 'namespaces "team-ns" not found' in out.stderr
    namespace = manifest(tmp_path, "team-ns.yaml", "{apiVersion: v1, kind: Namespace, "
                         "metadata: {name: team-ns}}")
    assert cli("create", "-f", namespace, env=daemon).stdout == "namespace/team-ns created\n"
    out = cli("-n", "team-ns", "create", "-f", f, env=daemon)
    assert out.stdout == "service/sel-a created\nservice/sel-b created\n"
    out = cli("get", "svc", "-n", "team-ns", "-l", "team=red", "-o", "name", env=daemon)
    assert out.stdout == "service/sel-a\n"
    out = cli("get", "svc", "-n", "team-ns", "-l", "team in (red,blue)", "-o", "name", env=daemon)
    assert out.stdout == "service/sel-a\nservice/sel-b\n"
    out = cli("get", "svc", "-A", env=daemon)
    assert any(line.split()[:2] == ["team-ns", "sel-b"] for line in out.stdout.splitlines())
    out = cli("get", "svc", "-n", "empty-ns", env=daemon)
    assert (out.returncode, out.stderr) == (0, "No resources found in empty-ns namespace.\n")
    out = cli("-n", "other", "create", "-f", manifest(tmp_path, "ns.yaml", SERVICE.format(
        name="x", team="a", port=1).replace("metadata: {", "metadata: {namespace: team-ns, ")),
        env=daemon)  # fmt: skip
    assert out.returncode == 1 and "does not match the namespace" in out.stderr
    assert cli("-n", "team-ns", "delete", "svc", "sel-a", "sel-b", env=daemon).returncode == 0


def test_seed_manifests_pods_endpoints_and_slices(daemon):
    out = lbcore("create", "-f", "examples/my-service.yaml", env=daemon)
    assert out.stdout == "service/my-service created\n"
    out = cli("create", "-f", "-", env=daemon, stdin=(EXAMPLES / "my-app-pods.yaml").read_text())
    assert out.stdout == "pod/my-app-1 created\npod/my-app-2 created\npod/my-app-3 created\n"
    out = cli("get", "po", "-o", "wide", env=daemon)
    assert [line.split()[5] for line in out.stdout.splitlines()[1:]] == [
        "127.0.0.11",
        "127.0.0.12",
        "127.0.0.13",
    ]
    # the daemon's endpoints controller writes the Endpoints and EndpointSlices; the CLI reads
    out = until(lambda: cli("get", "ep", "my-service", env=daemon),
                lambda o: o.returncode == 0 and "127.0.0.13:8080" in o.stdout)
    assert out.stdout.splitlines()[1].split()[:2] == [
        "my-service",
        "127.0.0.11:8080,127.0.0.12:8080,127.0.0.13:8080",
    ]
    as_json = json.loads(cli("get", "ep", "my-service", "-o", "json", env=daemon).stdout)
    assert [a["ip"] for a in as_json["subsets"][0]["addresses"]] == [
        "127.0.0.11", "127.0.0.12", "127.0.0.13"]
    as_yaml = yaml.safe_load(cli("get", "ep", "-o", "yaml", env=daemon).stdout)
    assert [i["metadata"]["name"] for i in as_yaml["items"]] == ["my-service"]
    assert as_yaml["items"][0]["subsets"] == as_json["subsets"]  # what the table shows
    out = cli("get", "endpointslices", "-l", "kubernetes.io/service-name=my-service", env=daemon)
    assert out.returncode == 0
    assert out.stdout.splitlines()[1].split()[1:4] == [
        "IPv4", "8080", "127.0.0.11,127.0.0.12,127.0.0.13"]
    out = cli("describe", "service", "my-service", env=daemon)
    assert "Endpoints:                127.0.0.11:8080,127.0.0.12:8080,127.0.0.13:8080" in out.stdout
    assert "Internal Traffic Policy:  Cluster\n" in out.stdout
    out = cli("delete", "-f", "examples/my-app-pods.yaml", env=daemon)
    assert out.returncode == 0 and out.stdout.count("deleted") == 3
    # no pod: an empty slice stays, and kubectl prints nothing after "Endpoints:"
    out = until(lambda: cli("describe", "service", "my-service", env=daemon),
                lambda o: "127.0.0" not in o.stdout)
    assert "\nEndpoints:                \n" in out.stdout
    out = cli("get", "ep", "my-service", env=daemon)
    assert out.stdout.splitlines()[1].split()[:2] == ["my-service", "<none>"]
    assert cli("delete", "svc", "my-service", env=daemon).returncode == 0
    out = until(lambda: cli("get", "ep", "my-service", env=daemon), lambda o: o.returncode == 1)
    assert out.stderr == 'Error from server (NotFound): endpoints "my-service" not found\n'


def until(run, done, attempts: int = 100):
    """``run()`` again (every 50 ms, at most ``attempts`` times) until ``done`` of its result."""
    for _ in range(attempts):
        result = run()
        if done(result):
            return result
        time.sleep(0.05)
    return result


def test_describe_unknown_service_and_delete_unknown_object(daemon):
    out = cli("describe", "service", "ghost", env=daemon)
    assert (out.returncode, out.stderr) == (
        1,
        'Error from server (NotFound): services "ghost" not found\n',
    )
    out = cli("delete", "pod", "ghost", env=daemon)
    assert (
        out.returncode == 1
        and out.stderr == 'Error from server (NotFound): pods "ghost" not found\n'
    )


def test_rules_prints_the_iptables_rules_for_the_daemons_state(daemon, tmp_path):
    from lbcore.runtime.daemon import load_plugins

    if "iptables" not in load_plugins()[1]:
        pytest.skip("the iptables frontend is not installed")
    f = manifest(
        tmp_path,
        "r.yaml",
        SERVICE.format(name="ruled", team="a", port=8443).replace(
            "spec:\n", "spec:\n  clusterIP: 127.10.200.7\n"
        ),
    )
    assert cli("create", "-f", f, env=daemon).returncode == 0
    out = cli("rules", "--frontend", "iptables", env=daemon)
    assert out.returncode == 0, out.stderr
    assert "127.10.200.7" in out.stdout and "8443" in out.stdout
    out = cli("rules", "--frontend", "nope", env=daemon)
    assert out.returncode == 1 and 'unknown frontend "nope"; available:' in out.stderr
    config = tmp_path / "bad.yaml"
    config.write_text("frontends: [{name: iptables, options: {timeout: 0}}]\n")
    out = cli("rules", "--frontend", "iptables", "--config", str(config), env=daemon)
    assert out.returncode == 1, out.stderr
    assert "error: frontends[0].options.timeout: invalid value 0" in out.stderr, out.stderr
    assert cli("delete", "svc", "ruled", env=daemon).returncode == 0


def test_kubeconfig_talks_to_a_cluster_through_the_official_client(daemon, tmp_path):
    """The daemon speaks the Kubernetes API, so it stands in for a cluster's API server."""
    server = Path(daemon["LBCORE_DATA_DIR"], "admin-address").read_text().strip()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t" * 20}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    elsewhere = dict(daemon, LBCORE_SERVER="http://127.0.0.1:1")  # proves the kubeconfig is used
    k = ("--kubeconfig", str(kubeconfig))
    f = manifest(tmp_path, "k.yaml", SERVICE.format(name="via-kube", team="k", port=84))
    assert cli(*k, "create", "-f", f, env=elsewhere).stdout == "service/via-kube created\n"
    out = cli(*k, "get", "svc", "-l", "team=k", "-o", "name", env=elsewhere)
    assert out.stdout == "service/via-kube\n"
    out = cli(*k, "create", "-f", f, env=elsewhere)
    assert out.stderr == 'Error from server (AlreadyExists): services "via-kube" already exists\n'
    assert cli(*k, "apply", "-f", f, env=elsewhere).stdout == "service/via-kube configured\n"
    out = cli(*k, "get", "svc", "ghost", env=elsewhere)
    assert out.stderr == 'Error from server (NotFound): services "ghost" not found\n'
    assert cli(*k, "delete", "svc", "via-kube", env=elsewhere).returncode == 0
    out = cli("--kubeconfig", str(tmp_path / "missing"), "get", "svc", env=elsewhere)
    assert out.returncode == 1 and out.stderr.startswith("error: --kubeconfig ")
