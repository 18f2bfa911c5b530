"""The test node's own network: one network namespace per node run, and the bridges between it
and the host's loopback (the only addresses the host may send to, docs/testing.md).

A node run with a pod network (scripts/node.py `Node(pod_network=...)`) runs containerd and
the kubelet inside a network namespace the run creates (`<run dir>/netns`, a bind mount, so the
run's tear-down removes it with the other mounts). Pods get their own namespaces from
containerd and a veth pair into the node's namespace (the CNI `ptp` plugin), so two replicas
of a Deployment can listen on the same ports. Every address of the node and its pods lives
in those namespaces, which have no link to anything else: nothing there can reach a real
network. The host and the node meet only through this module's relays, sockets opened in
the node's namespace by a thread that entered it (`setns` is per thread):

- the node's `127.0.0.1:<port>` -> the host's `127.0.0.1:<port>`: the API server (for the
  kubelet) and each trusted registry (for containerd's pulls);
- the node's `KUBERNETES_SERVICE_IP:443` -> the API server: what in-cluster config dials
  (the `kubernetes` Service's ClusterIP; no kube-proxy exists to route it);
- the host's `127.0.0.1:<kubelet port>` -> the node's kubelet (`kubectl logs`);
- an HTTP proxy on the host's loopback that opens its connections in the node's namespace:
  the API server's `HTTPS_PROXY` and `HTTP_PROXY`, so with `--enable-aggregator-routing` it
  reaches a webhook Service's endpoints (pod IPs), and `pods/proxy` reaches pods.
Stdlib only; the relays are daemon threads of the process that started the node, so they end
with it whatever way it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
# Inside the node's namespace only (docs/testing.md): the Service CIDR's first address (the
# `kubernetes` Service, which the API server's certificate names), the node's address and
# the pods' range. No route to them exists outside it.
KUBERNETES_SERVICE_IP = "10.0.0.1"
NODE_IP = "10.0.1.1"
POD_SUBNET = "10.0.2.0/24"
T = TypeVar("T")
Address = tuple[str, int]


def _enter(netns: Path) -> None:
    """Move the calling thread (only it) into `netns`."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    descriptor = os.open(netns, os.O_RDONLY)
    try:
        if libc.setns(descriptor, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {netns}: {os.strerror(error)}")
    finally:
        os.close(descriptor)


def run_in(netns: Path | None, make: Callable[[], T]) -> T:
    """`make()` in a thread inside `netns` (None: this thread, the host's namespace); sockets
    it creates stay in that namespace wherever they are used from."""
    if netns is None:
        return make()
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            _enter(netns)
            result.append(make())
        except BaseException as error:  # handed to the caller
            failure.append(error)

    thread = threading.Thread(target=target, name="netns-enter")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def connect(netns: Path | None, address: Address, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to `address` as seen from `netns`."""
    return run_in(netns, lambda: socket.create_connection(address, timeout=timeout))


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _splice(client: socket.socket, upstream: socket.socket) -> None:
    """Copy both ways until both sides are done, then close both."""
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


class Relay:
    """Listens on `listen` in `listen_ns`; each connection is relayed to a target chosen by
    `open_upstream(client)` (which may read a request head from the client first)."""

    def __init__(self, listen_ns: Path | None, listen: Address,
                 open_upstream: Callable[[socket.socket], socket.socket | None]) -> None:
        self.listen, self.open_upstream = listen, open_upstream

        def bind() -> socket.socket:
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(listen)
            server.listen(128)
            return server

        self.server = run_in(listen_ns, bind)
        self.connections = 0
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, name=f"relay-{listen[0]}:{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = self.open_upstream(client)
        except OSError:
            upstream = None
        if upstream is None:
            client.close()
            return
        upstream.settimeout(None)
        _splice(client, upstream)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()


def forward(listen_ns: Path | None, listen: Address, target_ns: Path | None, target: Address) -> Relay:
    """Every connection to `listen` (in `listen_ns`) relayed to `target` (in `target_ns`)."""
    return Relay(listen_ns, listen, lambda _client: connect(target_ns, target))


def tunnel(client: socket.socket, target_ns: Callable[[], Path | None]) -> socket.socket | None:
    """Read a proxy request from `client` and open its target in `target_ns()`: `CONNECT
    host:port` (HTTPS_PROXY) becomes a tunnel; `GET http://host:port/path` (HTTP_PROXY, e.g.
    the API server's `pods/proxy` to a plain-HTTP port) is sent on in origin form with
    `Connection: close`, so one proxied connection carries one request."""
    client.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client.recv(4096)
        if not chunk or len(head) > 16384:
            return None
        head += chunk
    request_line, rest = head.split(b"\r\n", 1)
    method, target, version = request_line.decode("latin-1").split(" ", 2)
    plain = target.startswith("http://")
    authority, _, path = target.removeprefix("http://").partition("/") if plain else (target, "", "")
    host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "80")
    if (method == "CONNECT") == plain or not port.isdigit():
        client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
        return None
    try:
        upstream = connect(target_ns(), (host.strip("[]"), int(port)))
    except OSError:
        client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        return None
    if plain:
        headers = [line for line in rest.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
                   if not line.lower().startswith((b"connection:", b"proxy-connection:"))]
        body = rest.split(b"\r\n\r\n", 1)[1]
        upstream.sendall(f"{method} /{path} {version}\r\n".encode("latin-1") + b"\r\n".join(headers)
                         + b"\r\nConnection: close\r\n\r\n" + body)
    else:
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    client.settimeout(None)
    return upstream


def create_netns(path: Path) -> Path:
    """A new network namespace kept alive by a bind mount on `path`, with `lo` up and the
    node's and the `kubernetes` Service's addresses on it (and nothing else)."""
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True, capture_output=True)
    for command in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"],
                    ["ip", "addr", "add", f"{KUBERNETES_SERVICE_IP}/32", "dev", "lo"]):
        subprocess.run(["nsenter", f"--net={path}", *command], check=True, capture_output=True)
    return path


def cni_config(name: str, ipam_dir: Path) -> dict[str, object]:
    """ptp: a veth pair per pod into the node's namespace, addresses from POD_SUBNET (leases
    under the run dir), no masquerading (no iptables rule anywhere)."""
    return {"cniVersion": "0.4.0", "name": name, "plugins": [{
        "type": "ptp", "ipMasq": False, "mtu": 65520,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(ipam_dir)},
    }]}


class PodNetwork:
    """The relays of one node run. `proxy` exists from construction (the API server's
    `HTTPS_PROXY` must be known before it starts); the rest once the namespace exists."""

    def __init__(self) -> None:
        self.netns: Path | None = None
        self.relays: list[Relay] = []
        self._proxy: Relay | None = None
        self._proxy_target: list[Path] = []
        self._exposed: set[int] = set()
        self.proxy_url = ""

    def start_proxy(self) -> str:
        """The CONNECT proxy's URL; its tunnels open in the namespace once `attach` ran."""
        def tunnel_target() -> Path:
            if not self._proxy_target:
                raise OSError("the node's network namespace does not exist yet")
            return self._proxy_target[0]

        self._proxy = Relay(None, ("127.0.0.1", 0), lambda client: tunnel(client, tunnel_target))
        self.proxy_url = f"http://127.0.0.1:{self._proxy.port}"
        return self.proxy_url

    def attach(self, netns: Path, apiserver_port: int, kubelet_port: int) -> None:
        self.netns = netns
        self._proxy_target.append(netns)
        api = ("127.0.0.1", apiserver_port)
        self.relays += [forward(netns, api, None, api),
                        forward(netns, (KUBERNETES_SERVICE_IP, 443), None, api),
                        forward(None, ("127.0.0.1", kubelet_port), netns, ("127.0.0.1", kubelet_port))]

    @property
    def proxied(self) -> int:
        """Connections the API server made into the pod network so far (webhook calls, pod proxy)."""
        return self._proxy.connections if self._proxy else 0

    def expose_host_port(self, port: int) -> None:
        """The host's `127.0.0.1:port` (a registry) at the same address inside the node."""
        assert self.netns is not None
        if port in self._exposed:
            return
        self._exposed.add(port)
        address = ("127.0.0.1", port)
        self.relays.append(forward(self.netns, address, None, address))

    def close(self) -> None:
        for relay in (*self.relays, *([self._proxy] if self._proxy else [])):
            relay.close()
        self.relays, self._proxy = [], None
