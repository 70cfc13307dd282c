"""Deployment modes, each with the real Codex CLI through a real mitmdump running `-s addons/bridge.py`.

1. reverse mode in front of a TLS gateway (Codex -> http or https -> mitmdump -> https upstream), with
   the upstream certificate trusted via `ssl_verify_upstream_trusted_ca`, refused without it, and
   accepted with `ssl_insecure`;
2. regular proxy mode (Codex with `HTTPS_PROXY`, trusting mitmproxy's CA via `CODEX_CA_CERTIFICATE`);
3. transparent mode for an unmodified Codex (built-in `openai` provider, default base URL
   https://api.openai.com/v1, `CODEX_API_KEY`), in network namespaces the test creates: either Codex's
   port-443 traffic is routed through a second namespace (a "gateway") where iptables REDIRECTs it in
   PREROUTING to mitmdump, or Codex and mitmdump share one namespace and the REDIRECT in OUTPUT skips
   mitmdump's gid. A TLS mock with a certificate for api.openai.com stands in for the real one;
   nothing leaves the namespaces;
4. nginx (the standard WebSocket location) in front of the bridge.

Every working mode asserts: Codex exits 0 with the mock's answer, the upstream saw no WebSocket
upgrade attempt (the bridge answered it), and Codex did not fall back to HTTP (no POST flow).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http as mhttp
from mitmproxy import io as mio

from codexbridge.tools.procs import free_port, mitmdump_command
from support import BIN, need
from support.certs import OPENAI_HOST, Certs, make_certs
from support.codex import Codex, quiet_codex_config
from support.mitmdump import TEST_OPTIONS, posts_through_proxy, start_mitmdump
from support.nginx import start_nginx
from support.processes import Process, spawn, start_process
from support.upstream import Upstream, start_upstream

pytestmark = pytest.mark.codex

ANSWER = "hi from mock"
IP = shutil.which("ip") or "/usr/sbin/ip"
IPTABLES = shutil.which("iptables") or next((p for p in ("/usr/sbin/iptables",) if Path(p).exists()), None)


# ---------------------------------------------------------------------------------------------------------------
# processes


@dataclass
class TlsUpstream(Upstream):
    """The SSE-only mock upstream over HTTPS with a certificate from the test CA."""

    ca: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _get(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        ctx = ssl.create_default_context(cafile=str(self.ca))
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return json.loads(r.read())


def start_tls_upstream(tmp: Path, certs: Certs) -> TlsUpstream:
    up = start_upstream(tmp, "--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
    return TlsUpstream(up.child, certs.ca)


@dataclass
class Bridge:
    """mitmdump with the bridge, its own confdir (so its own CA) and a flow file."""

    process: Process
    confdir: Path
    flow_file: Path
    port: int = 0

    @property
    def log(self) -> str:
        return self.process.log

    @property
    def ca(self) -> Path:
        """mitmproxy's CA certificate, written into the confdir at startup: what Codex must trust."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    def flows(self) -> list[mhttp.HTTPFlow]:
        """Stops mitmdump (which closes the flow file) and reads every flow it recorded."""
        self.process.stop()
        with open(self.flow_file, "rb") as f:
            return [fl for fl in mio.FlowReader(f).stream() if isinstance(fl, mhttp.HTTPFlow)]


def start_bridge(tmp: Path, mode: str, *options: str, netns: str | None = None, prefix: list[str] | None = None,
                 port: int | None = None) -> Bridge:
    """mitmdump -s addons/bridge.py --mode MODE --set OPTION...; inside `netns` when given (listening on all
    addresses there, readiness from its log, started through `prefix`), else on 127.0.0.1."""
    port = port or free_port()
    home = tmp / f"mitm-{secrets.token_hex(3)}"
    confdir, flow_file = home / "confdir", home / "flows"
    confdir.mkdir(parents=True)
    options = (*TEST_OPTIONS, f"confdir={confdir}", f"save_stream_file={flow_file}", *options)
    if netns is None:
        proc = start_process(mitmdump_command("", port, options, mode=mode), port, home / "mitmdump.log")
    else:
        cmd = mitmdump_command("", port, options, mode=mode, host="")
        proc = start_in_netns(netns, [*(prefix or []), *cmd], home / "mitmdump.log", "listening at")
    assert (confdir / "mitmproxy-ca-cert.pem").exists()
    return Bridge(proc, confdir, flow_file, port)


def start_in_netns(ns: str, cmd: list[str], log_path: Path, ready: str, timeout: float = 30) -> Process:
    """`ip netns exec NS cmd` (which execs cmd, so the pid is cmd's); ready when its log contains `ready`."""
    p = Process(spawn([IP, "netns", "exec", ns, *cmd], 0, log_path))
    deadline = time.monotonic() + timeout
    while ready not in p.log:
        if p.proc.poll() is not None or time.monotonic() > deadline:
            p.stop()
            raise RuntimeError(f"{cmd[0]} did not start in netns {ns}:\n{p.log}")
        time.sleep(0.05)
    return p


def run(cmd: list[str], timeout: float = 20) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with {proc.returncode}: {proc.stderr}")
    return proc.stdout


# ---------------------------------------------------------------------------------------------------------------
# fixtures and assertions


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    """Everything a test starts is registered here and torn down (last started, first stopped) even on failure."""
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_upstream(tmp_path: Path, certs: Certs, stack: contextlib.ExitStack) -> TlsUpstream:
    up = start_tls_upstream(tmp_path, certs)
    stack.callback(up.stop)
    return up


def quiet(tmp: Path) -> str:
    """quiet_codex_config: no plugin/marketplace/update requests, so every flow the proxy sees is Codex's model
    traffic (in regular and transparent mode the proxy would otherwise be asked for api.github.com, chatgpt.com)."""
    instructions = tmp / "instructions.md"
    instructions.write_text("You are a test double of Codex. Keep answers short.\n")
    return quiet_codex_config(instructions)


def websocket_flows(flows: list[mhttp.HTTPFlow]) -> list[mhttp.HTTPFlow]:
    return [f for f in flows if f.websocket is not None]


def bridge_frames(flow: mhttp.HTTPFlow) -> list[dict[str, Any]]:
    assert flow.websocket is not None
    return [json.loads(m.text) for m in flow.websocket.messages if not m.from_client]


def assert_bridged(result: Any, upstream_stats: dict[str, int], bridge: Bridge) -> list[mhttp.HTTPFlow]:
    """Codex got the answer over one bridged WebSocket; the upstream got one POST and no upgrade; no HTTP fallback."""
    assert result.returncode == 0, result.stderr
    assert ANSWER in result.stdout
    assert upstream_stats["upgrade_attempts"] == 0, "the upstream saw a WebSocket upgrade: the bridge did not answer it"
    assert upstream_stats["requests"] == 1, upstream_stats
    assert posts_through_proxy(bridge.log) == 0, "Codex fell back to HTTP"
    flows = bridge.flows()
    ws = websocket_flows(flows)
    assert len(ws) == 1, [f.request.pretty_url for f in flows]
    assert ws[0].response is not None and ws[0].response.status_code == 101
    assert [f for f in flows if f.request.method == "POST"] == []
    assert any(frame.get("type") == "response.completed" for frame in bridge_frames(ws[0]))
    return flows


# ---------------------------------------------------------------------------------------------------------------
# 1. reverse mode in front of a TLS gateway


@pytest.mark.parametrize("client_scheme", ["http", "https"])
def test_reverse_mode_in_front_of_a_tls_gateway(client_scheme: str, tmp_path: Path, codex: Codex,
                                                 tls_upstream: TlsUpstream, certs: Certs,
                                                 stack: contextlib.ExitStack) -> None:
    bridge = start_bridge(tmp_path, f"reverse:{tls_upstream.url}", f"ssl_verify_upstream_trusted_ca={certs.ca}")
    stack.callback(bridge.process.stop)
    codex.configure(f"{client_scheme}://127.0.0.1:{bridge.port}/v1", extra=quiet(tmp_path))
    if client_scheme == "https":
        # mitmdump answers TLS itself with a certificate from its own CA (confdir/mitmproxy-ca-cert.pem)
        codex.env["CODEX_CA_CERTIFICATE"] = str(bridge.ca)
    result = codex.exec("say hi", timeout=60)
    flows = assert_bridged(result, tls_upstream.stats(), bridge)
    ws = websocket_flows(flows)[0]
    assert ws.client_conn.tls_established is (client_scheme == "https")
    assert ws.client_conn.sni is None and ws.client_conn.tls_version == ("TLSv1.3" if client_scheme == "https" else None)
    assert "stage=fast_path" in bridge.log  # served by the listener's fast path, over TLS too
    assert ws.request.pretty_url == f"{tls_upstream.url}/v1/responses"
    post = tls_upstream.requests()[0]
    assert post["method"] == "POST" and post["path"] == "/v1/responses"
    assert ["authorization", "Bearer sk-test-codexbridge"] in post["headers"]


def test_reverse_mode_refuses_an_untrusted_gateway_certificate(tmp_path: Path, codex: Codex,
                                                                tls_upstream: TlsUpstream,
                                                                stack: contextlib.ExitStack) -> None:
    bridge = start_bridge(tmp_path, f"reverse:{tls_upstream.url}")  # no ssl_verify_upstream_trusted_ca
    stack.callback(bridge.process.stop)
    codex.configure(f"http://127.0.0.1:{bridge.port}/v1", extra=quiet(tmp_path))
    result = codex.exec("say hi", timeout=60)
    assert result.returncode != 0
    assert ANSWER not in result.stdout
    assert tls_upstream.stats()["requests"] == 0 and tls_upstream.stats()["upgrade_attempts"] == 0
    flows = bridge.flows()
    errors = [frame for f in websocket_flows(flows) for frame in bridge_frames(f) if frame.get("type") == "error"]
    assert errors, "the bridge must answer with an error frame"
    for frame in errors:
        assert frame["status"] == 502
        assert frame["error"]["code"] == "upstream_unreachable"
        assert "CERTIFICATE_VERIFY_FAILED" in frame["error"]["message"]
    # Codex then falls back to HTTP; mitmproxy itself refuses the same certificate for those POSTs
    assert "Certificate verify failed" in bridge.log


def test_reverse_mode_with_ssl_insecure(tmp_path: Path, codex: Codex, tls_upstream: TlsUpstream,
                                        stack: contextlib.ExitStack) -> None:
    bridge = start_bridge(tmp_path, f"reverse:{tls_upstream.url}", "ssl_insecure=true")
    stack.callback(bridge.process.stop)
    codex.configure(f"http://127.0.0.1:{bridge.port}/v1", extra=quiet(tmp_path))
    result = codex.exec("say hi", timeout=60)
    assert_bridged(result, tls_upstream.stats(), bridge)


# ---------------------------------------------------------------------------------------------------------------
# 2. regular proxy mode


@pytest.mark.parametrize("proxy_var", ["HTTPS_PROXY", "ALL_PROXY"])
def test_regular_proxy_mode(proxy_var: str, tmp_path: Path, codex: Codex, tls_upstream: TlsUpstream,
                            certs: Certs, stack: contextlib.ExitStack) -> None:
    bridge = start_bridge(tmp_path, "regular", f"ssl_verify_upstream_trusted_ca={certs.ca}")
    stack.callback(bridge.process.stop)
    # Codex talks to the gateway's own https URL; only the proxy variable and the CA point at mitmdump.
    codex.configure(f"{tls_upstream.url}/v1", extra=quiet(tmp_path))
    codex.env.update({proxy_var: f"http://127.0.0.1:{bridge.port}", "CODEX_CA_CERTIFICATE": str(bridge.ca)})
    result = codex.exec("say hi", timeout=60)
    flows = assert_bridged(result, tls_upstream.stats(), bridge)
    ws = websocket_flows(flows)[0]
    assert ws.client_conn.tls_established, "Codex must have tunnelled TLS through CONNECT"
    assert ws.request.pretty_url == f"{tls_upstream.url}/v1/responses"
    assert {f.request.host for f in flows} == {"127.0.0.1"}, "no other host may go through the proxy"


def test_regular_proxy_mode_is_bypassed_for_no_proxy_hosts(tmp_path: Path, codex: Codex, tls_upstream: TlsUpstream,
                                                            certs: Certs, stack: contextlib.ExitStack) -> None:
    """Codex skips the proxy for NO_PROXY hosts (loopback is not special-cased otherwise): then it meets the
    gateway's certificate, signed by a CA it was not told to trust, and never reaches the bridge."""
    bridge = start_bridge(tmp_path, "regular", f"ssl_verify_upstream_trusted_ca={certs.ca}")
    stack.callback(bridge.process.stop)
    codex.configure(f"{tls_upstream.url}/v1", extra=quiet(tmp_path))
    codex.env.update({"HTTPS_PROXY": f"http://127.0.0.1:{bridge.port}", "NO_PROXY": "127.0.0.1",
                      "CODEX_CA_CERTIFICATE": str(bridge.ca)})
    result = codex.exec("say hi", timeout=60)
    assert result.returncode != 0
    assert "stage=Tls" in result.stderr or "certificate" in result.stderr.lower(), result.stderr[-2000:]
    assert tls_upstream.stats()["requests"] == 0
    assert bridge.flows() == []


# 3. transparent mode, unmodified Codex (built-in provider, https://api.openai.com/v1), in network namespaces

GATEWAY_IP, CLIENT_IP, OPENAI_IP, MITM_PORT = "10.77.0.1", "10.77.0.2", "10.77.1.1", 8080
MITM_GID = 4242  # same-host topology: mitmdump runs with this gid, whose connections the REDIRECT rule skips
SETPRIV = shutil.which("setpriv")


@dataclass
class Netns:
    """Where Codex runs (`client`) and where mitmdump and the stand-in api.openai.com run (`gateway`);
    `gateway_cmd` prefixes commands that must not be intercepted there."""

    client: str
    gateway: str
    gateway_cmd: list[str] = field(default_factory=list)


def add_netns(stack: contextlib.ExitStack, name: str) -> None:
    """A namespace with lo up; `ip netns exec` bind-mounts /etc/netns/NAME/{hosts,resolv.conf} over /etc/ in it
    only: api.openai.com resolves to OPENAI_IP, and the resolver points at 127.0.0.1, so no lookup waits on a
    nameserver that cannot be reached."""
    run([IP, "netns", "add", name])
    stack.callback(subprocess.run, [IP, "netns", "del", name], timeout=20, capture_output=True)
    etc = Path("/etc/netns") / name
    etc.mkdir(parents=True, exist_ok=True)
    stack.callback(shutil.rmtree, etc, ignore_errors=True)
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n{OPENAI_IP} {OPENAI_HOST}\n")
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    run([IP, "-n", name, "link", "set", "lo", "up"])


def rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def make_netns(stack: contextlib.ExitStack, topology: str) -> Netns:
    """`gateway`: two namespaces joined by a veth pair and nothing else; the client routes everything via the
    gateway, where iptables REDIRECTs tcp/443 arriving on the veth (PREROUTING) to mitmdump, and where OPENAI_IP
    (on lo) is the TLS mock. mitmdump's own connections leave through OUTPUT and are not redirected.
    `same-host`: one namespace; REDIRECT in OUTPUT for every process except those with gid MITM_GID, which is
    the gid mitmdump (and the test's own look at the mock) runs with."""
    tag = secrets.token_hex(3)
    assert IPTABLES is not None
    if not Path("/etc/netns").exists():
        stack.callback(rmdir_if_empty, Path("/etc/netns"))
    if topology == "same-host":
        ns = Netns(f"cbx-{tag}-h", f"cbx-{tag}-h",
                   [str(SETPRIV), f"--regid={MITM_GID}", "--clear-groups"])
        add_netns(stack, ns.client)
        run([IP, "-n", ns.client, "addr", "add", f"{OPENAI_IP}/32", "dev", "lo"])
        run([IP, "netns", "exec", ns.client, IPTABLES, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "443",
             "-m", "owner", "!", "--gid-owner", str(MITM_GID), "-j", "REDIRECT", "--to-ports", str(MITM_PORT)])
        return ns
    ns = Netns(f"cbx-{tag}-c", f"cbx-{tag}-g")
    veth_c, veth_g = f"cx{tag}c", f"cx{tag}g"
    add_netns(stack, ns.client)
    add_netns(stack, ns.gateway)
    run([IP, "link", "add", veth_c, "netns", ns.client, "type", "veth", "peer", "name", veth_g, "netns", ns.gateway])
    run([IP, "-n", ns.client, "addr", "add", f"{CLIENT_IP}/24", "dev", veth_c])
    run([IP, "-n", ns.gateway, "addr", "add", f"{GATEWAY_IP}/24", "dev", veth_g])
    run([IP, "-n", ns.gateway, "addr", "add", f"{OPENAI_IP}/32", "dev", "lo"])
    run([IP, "-n", ns.client, "link", "set", veth_c, "up"])
    run([IP, "-n", ns.gateway, "link", "set", veth_g, "up"])
    run([IP, "-n", ns.client, "route", "add", "default", "via", GATEWAY_IP])
    run([IP, "netns", "exec", ns.gateway, IPTABLES, "-t", "nat", "-A", "PREROUTING", "-i", veth_g, "-p", "tcp",
         "--dport", "443", "-j", "REDIRECT", "--to-ports", str(MITM_PORT)])
    return ns


def netns_get(ns: Netns, path: str, ca: Path) -> Any:
    """GET a JSON document from the stand-in api.openai.com, from inside the gateway namespace, not intercepted."""
    code = ("import json, ssl, sys, urllib.request\n"
            "ctx = ssl.create_default_context(cafile=sys.argv[2])\n"
            "print(urllib.request.urlopen(sys.argv[1], timeout=10, context=ctx).read().decode())\n")
    url = f"https://{OPENAI_HOST}{path}"
    return json.loads(run([IP, "netns", "exec", ns.gateway, *ns.gateway_cmd, str(BIN / "python"), "-c", code, url,
                           str(ca)]))


@pytest.mark.parametrize("topology", ["gateway", "same-host"])
def test_transparent_mode_for_an_unmodified_codex(topology: str, tmp_path: Path, codex: Codex, certs: Certs,
                                                   stack: contextlib.ExitStack) -> None:
    need("root (network namespaces and iptables)", os.geteuid() == 0)
    need("iproute2 (ip)", Path(IP).exists())
    need("iptables (apt-get install iptables)", IPTABLES is not None)
    need("setpriv (util-linux)", SETPRIV is not None)
    ns = make_netns(stack, topology)
    mock = start_in_netns(ns.gateway, [str(BIN / "python"), "-m", "codexbridge.tools.demo_upstream", "--host", OPENAI_IP,
                                       "--port", "443", "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)],
                          tmp_path / "mock.log", "listening on")
    stack.callback(mock.stop)
    bridge = start_bridge(tmp_path, "transparent", f"ssl_verify_upstream_trusted_ca={certs.ca}",
                          netns=ns.gateway, prefix=ns.gateway_cmd, port=MITM_PORT)
    stack.callback(bridge.process.stop)

    # the unmodified config: built-in provider, default base URL; only the quiet keys and one feature switch
    # (API-key model discovery first asks https://chatgpt.com/backend-api/codex/models and waits seconds for it)
    # (quiet() ends inside [features])
    config = 'model = "gpt-5.5"\n' + quiet(tmp_path) + "api_key_model_discovery = false\n"
    (codex.home / "config.toml").write_text(config)
    wrapper = tmp_path / "codex-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec {IP} netns exec {ns.client} {codex.binary} "$@"\n')
    wrapper.chmod(0o755)
    codex.binary = str(wrapper)
    codex.env.update({"CODEX_API_KEY": "sk-test-transparent", "CODEX_CA_CERTIFICATE": str(bridge.ca)})
    result = codex.exec("say hi", timeout=60)

    flows = assert_bridged(result, netns_get(ns, "/__mock/stats", certs.ca), bridge)
    ws = websocket_flows(flows)[0]
    assert ws.client_conn.peername[0] == (CLIENT_IP if topology == "gateway" else OPENAI_IP)
    assert ws.client_conn.sni == OPENAI_HOST
    assert ws.request.pretty_url == f"https://{OPENAI_HOST}/v1/responses"
    [post] = netns_get(ns, "/__mock/requests", certs.ca)
    assert post["method"] == "POST" and post["path"] == "/v1/responses"
    assert ["Host", OPENAI_HOST] in post["headers"]
    assert ["authorization", "Bearer sk-test-transparent"] in post["headers"]


# ---------------------------------------------------------------------------------------------------------------
# 4. nginx in front of the bridge


@pytest.mark.nginx
def test_behind_nginx(tmp_path: Path, codex: Codex, stack: contextlib.ExitStack) -> None:
    upstream = start_upstream(tmp_path)  # plain http, SSE only, 405 to upgrades
    stack.callback(upstream.stop)
    mitm = start_mitmdump(tmp_path, upstream.url)
    stack.callback(mitm.stop)
    nginx = start_nginx(tmp_path, mitm.port, extra="proxy_read_timeout 3600s;\n            proxy_send_timeout 3600s;")
    stack.callback(nginx.stop)
    codex.configure(f"http://127.0.0.1:{nginx.port}/v1", extra=quiet(tmp_path))
    result = codex.exec("say hi", timeout=60)
    assert result.returncode == 0, result.stderr
    assert ANSWER in result.stdout
    assert upstream.stats()["upgrade_attempts"] == 0
    assert upstream.stats()["requests"] == 1
    assert posts_through_proxy(mitm.log) == 0, "Codex fell back to HTTP"
    assert mitm.log.count("<< 101") == 1
    nginx.stop()
    access = (nginx.log_path.parent / "access.log").read_text()
    assert '"GET /v1/responses HTTP/1.1" 101' in access, access
    assert "POST" not in access
