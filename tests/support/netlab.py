"""A throw-away network in `ip netns` namespaces for the NAT integration tests.

    [client] 198.51.100.2/24 eth0 --veth-- pub0 198.51.100.1/24 [router] priv0 10.77.0.1/24
                                                                      |  veth
                                        [switch] br0 (a bridge in a namespace of its own)
                                                 |  veth per VM
                            [vm1] eth0 10.77.0.11/24 gw .1   [vm2] 10.77.0.12/24 ...

Why it looks like this:
- The client has routes only to 198.51.100.0/24 (on link) and 203.0.113.0/24 via the router,
  none to 10.0.0.0/8: it can reach a VM only through a floating address.
- The bridge is not in the router's namespace: with br_netfilter loaded the router's conntrack
  would un-NAT bridged hairpin replies and hairpin tests would pass without the SNAT rule.
- Every link is created *inside* our namespaces (`ip link add ... peer ... netns X` run in a
  namespace), so nothing ever appears in the root namespace and interface names cannot collide
  with a parallel run. Namespace names carry a per-run prefix `fiplab-<hex>-`, and a flock'ed
  file in LOCK_DIR marks a run as alive so `cleanup_stale()` never removes a live lab.
- Router MAC addresses are fixed per lab, so VMs' neighbour entries stay valid across
  `destroy_router()`/`rebuild_router()` (a reboot keeps the NIC's MAC).
"""

import atexit
import errno
import fcntl
import fnmatch
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time

MARKER = "fiplab-"
LOCK_DIR = "/run/one-ipfloater-netlab"

CLIENT_IP = "198.51.100.2"
ROUTER_PUB_IP = "198.51.100.1"
PUB_PREFIXLEN = 24
ROUTED_POOL = "203.0.113.0/24"
ROUTER_PRIV_IP = "10.77.0.1"
PRIV_PREFIXLEN = 24
CLIENT_IF = "eth0"
VM_IF = "eth0"
BRIDGE = "br0"

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TRAFFIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traffic.py")


class LabError(subprocess.CalledProcessError):
    """A lab command failed; str() includes stderr (CalledProcessError's does not)."""

    def __str__(self):
        return "%s (stderr: %s)" % (super().__str__(), (self.stderr or "").strip())


def _run(argv, timeout=10.0, check=True, input=None):
    p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise LabError(p.returncode, argv, p.stdout, p.stderr)
    return p


def list_netns():
    """Names of all network namespaces `ip netns` knows."""
    out = _run(["ip", "-j", "netns", "list"]).stdout.strip()
    return [e["name"] for e in json.loads(out)] if out else []


def _lock_held(path):
    """True if a live process holds the flock on `path` (a lab that is still running)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock if we got it
    return False


def cleanup_stale(prefix_pattern=MARKER + "*"):
    """Delete namespaces matching the glob whose lab is dead (crashed run); return their names.

    A lab is alive while its process holds the flock on LOCK_DIR/<prefix>.lock, so parallel
    runs are left alone. Processes still inside a removed namespace keep it alive until they
    exit; our servers exit when their parent's stdin pipe closes.
    """
    names = list_netns()  # before the locks: a lab locks before it creates namespaces
    try:
        lock_names = [n[:-5] for n in os.listdir(LOCK_DIR) if n.endswith(".lock")]
    except FileNotFoundError:
        lock_names = []
    live = {p for p in lock_names if _lock_held(os.path.join(LOCK_DIR, p + ".lock"))}
    removed = []
    for name in names:
        if not fnmatch.fnmatchcase(name, prefix_pattern):
            continue
        if any(name.startswith(p) for p in live):
            continue
        _run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    for p in lock_names:
        if p not in live and fnmatch.fnmatchcase(p, prefix_pattern):
            try:
                os.unlink(os.path.join(LOCK_DIR, p + ".lock"))
            except FileNotFoundError:
                pass
    return removed


def _take_lock(prefix):
    """Create LOCK_DIR/<prefix>.lock already flock'ed (atomic: lock a temp file, then link)."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    tmp = os.path.join(LOCK_DIR, ".tmp-%d-%s" % (os.getpid(), secrets.token_hex(4)))
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"%d\n" % os.getpid())
        os.link(tmp, os.path.join(LOCK_DIR, prefix + ".lock"))  # EEXIST if the prefix is taken
        return fd
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.unlink(tmp)


class _Lines:
    """Drains a child's stdout in a thread; lines come out of a queue with a timeout."""

    def __init__(self, stream):
        self.q = queue.Queue()
        self._t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._t.start()

    def _pump(self, stream):
        for line in stream:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)  # EOF

    def get(self, timeout):
        """Next line, None on EOF; raises queue.Empty after `timeout` seconds."""
        return self.q.get(timeout=timeout)


class Server:
    """A running `traffic serve`; `.events` are the JSON lines it printed (what it received)."""

    def __init__(self, lab, ns, name, proc, ready_timeout=10.0):
        self.lab, self.ns, self.name, self.proc = lab, ns, name, proc
        self.lines = _Lines(proc.stdout)
        seen, deadline = [], time.monotonic() + ready_timeout
        while True:
            try:
                line = self.lines.get(max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line == "ready":
                return
            if line is None:
                self.stop()
                raise RuntimeError("server %s in %s did not start: %s"
                                   % (name, ns, "\n".join(seen) or "timeout"))
            seen.append(line)

    def wait_event(self, pred=lambda e: True, timeout=5.0):
        """First printed event (dict) matching `pred` within `timeout`, else None."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self.lines.get(left)
            except queue.Empty:
                return None
            if line is None:
                return None
            try:
                event = json.loads(line)
            except ValueError:  # stderr is merged in: skip tracebacks and warnings
                continue
            if pred(event):
                return event

    def stop(self, timeout=5.0):
        self.lab._stop_proc(self.proc, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class TcpSession:
    """One held TCP connection from a namespace: `.send(text)` -> reply/error dict."""

    def __init__(self, lab, proc, timeout):
        self.lab, self.proc, self.timeout = lab, proc, timeout
        self.lines = _Lines(proc.stdout)
        self.connected = self._next(timeout + 5)

    def _next(self, timeout):
        try:
            line = self.lines.get(timeout)
        except queue.Empty:
            return {"ok": False, "error": "no answer from tcp-session helper", "errno": None}
        if line is None:
            return {"ok": False, "error": "tcp-session helper exited", "errno": None}
        return json.loads(line)

    def send(self, text):
        """Send one line on the held connection; the dict says who answered or why not."""
        if self.proc.poll() is not None:
            return {"ok": False, "error": "tcp-session helper exited", "errno": None}
        self.proc.stdin.write("send %s\n" % text)
        self.proc.stdin.flush()
        return self._next(self.timeout + 5)

    def close(self, timeout=5.0):
        self.lab._stop_proc(self.proc, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Lab:
    """client -- router -- switch(bridge) -- N VMs, each in its own namespace.

    Use as a context manager; close() also runs at exit. Every command goes through
    `ip netns exec` into one of our namespaces; the root namespace is never changed.
    """

    def __init__(self, prefix=None, vms=2, pub_if="pub0", priv_if="priv0"):
        if prefix is None:
            for _ in range(20):
                prefix = "%s%s-" % (MARKER, secrets.token_hex(3))
                if not any(n.startswith(prefix) for n in list_netns()):
                    break
        else:
            cleanup_stale(prefix + "*")  # a crashed run with the same fixed prefix
        self.prefix = prefix
        self._lock_fd = _take_lock(prefix)
        self._namespaces = []
        self._procs = []  # (ns, Popen)
        self._closed = False
        atexit.register(self.close)
        tag = secrets.token_bytes(3)
        self._mac = lambda n: "02:%02x:%02x:%02x:00:%02x" % (tag[0], tag[1], tag[2], n)

        self.ns_client = prefix + "client"
        self.ns_router = prefix + "router"
        self.ns_switch = prefix + "switch"
        self.router_pub_if = pub_if
        self.router_priv_if = priv_if
        self.client_ip = CLIENT_IP
        self.router_pub_ip = ROUTER_PUB_IP
        self.router_priv_ip = ROUTER_PRIV_IP
        self.vm_count = 0
        try:
            self._add_ns(self.ns_client)
            self._add_ns(self.ns_switch)
            self._ip(self.ns_switch, "link", "add", "name", BRIDGE, "type", "bridge")
            self._ip(self.ns_switch, "link", "set", BRIDGE, "up")
            self._build_router()
            for _ in range(vms):
                self.add_vm()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ commands

    def run(self, ns, argv, timeout=10.0, check=True, input=None):
        """Run argv inside namespace `ns`; CompletedProcess with text stdout/stderr."""
        return _run(["ip", "netns", "exec", ns] + list(argv), timeout, check, input)

    def popen(self, ns, argv, **kw):
        """Start argv inside `ns`; the process is killed by close() (or destroy_router)."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (_PKG_PARENT, os.environ.get("PYTHONPATH")) if p))
        kw.setdefault("env", env)
        proc = subprocess.Popen(["ip", "netns", "exec", ns] + list(argv), **kw)
        self._procs.append((ns, proc))
        return proc

    def _ip(self, ns, *args, check=True):
        return self.run(ns, ["ip"] + list(args), check=check)

    def _sysctl(self, ns, *assignments):
        self.run(ns, ["sysctl", "-q", "-w"] + list(assignments))

    def _add_ns(self, ns):
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self._ip(ns, "link", "set", "lo", "up")
        # No IPv6: keeps neighbour tables and captures free of DAD/RS noise.
        self._sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")

    def _del_ns(self, ns):
        _run(["ip", "netns", "del", ns], check=False)
        if ns in self._namespaces:
            self._namespaces.remove(ns)

    # ------------------------------------------------------------ topology

    def _veth(self, ns, name, index, mac, peer_ns, peer, peer_index, peer_mac):
        """veth pair born in `ns` with its peer directly in `peer_ns`.

        Explicit, lab-unique ifindexes: when both ends happen to get the same ifindex (each
        namespace counts from 1) the kernel treats the carrier change as non-urgent and
        linkwatch applies it up to 1 s later, so the bridge port stays down and first packets
        are lost.
        """
        argv = ["link", "add", "name", name, "index", str(index)]
        argv += ["address", mac] if mac else []
        argv += ["type", "veth", "peer", "name", peer, "index", str(peer_index)]
        argv += ["address", peer_mac] if peer_mac else []
        self._ip(ns, *(argv + ["netns", peer_ns]))

    def _wait_up(self, namespaces, timeout=5.0):
        """Wait until every veth is operationally UP (bounded), i.e. bridge ports forward.

        lo and br0 stay UNKNOWN for a while; that does not stop the bridge forwarding.
        """
        deadline = time.monotonic() + timeout
        while True:
            down = [(ns, link["ifname"]) for ns in namespaces
                    for link in json.loads(self._ip(ns, "-j", "link", "show").stdout)
                    if link.get("operstate") not in ("UP", "UNKNOWN")]
            if not down:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("links not up after %.0f s: %s" % (timeout, down))
            time.sleep(0.02)

    def _build_router(self):
        r, pub, priv = self.ns_router, self.router_pub_if, self.router_priv_if
        self._add_ns(r)
        self._sysctl(r, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                     "net.ipv4.conf.default.rp_filter=0")
        # public side: the peer is born directly in the client namespace
        self._veth(r, pub, 101, self._mac(1), self.ns_client, CLIENT_IF, 102, self._mac(2))
        self._ip(r, "addr", "add", "%s/%d" % (ROUTER_PUB_IP, PUB_PREFIXLEN), "dev", pub)
        self._ip(r, "link", "set", pub, "up")
        c = self.ns_client
        self._ip(c, "addr", "add", "%s/%d" % (CLIENT_IP, PUB_PREFIXLEN), "dev", CLIENT_IF)
        self._ip(c, "link", "set", CLIENT_IF, "up")
        self._ip(c, "route", "add", ROUTED_POOL, "via", ROUTER_PUB_IP, "dev", CLIENT_IF)
        # private side: the peer is a port of the switch's bridge
        self._veth(r, priv, 103, self._mac(3), self.ns_switch, "p-router", 104, self._mac(4))
        self._ip(r, "addr", "add", "%s/%d" % (ROUTER_PRIV_IP, PRIV_PREFIXLEN), "dev", priv)
        self._ip(r, "link", "set", priv, "up")
        self._ip(self.ns_switch, "link", "set", "p-router", "master", BRIDGE, "up")
        self._sysctl(r, "net.ipv4.conf.%s.rp_filter=0" % pub, "net.ipv4.conf.%s.rp_filter=0" % priv)
        self._wait_up([c, r, self.ns_switch])

    def vm_ns(self, i):
        return "%svm%d" % (self.prefix, i)

    def vm_ip(self, i):
        return "10.77.0.%d" % (10 + i)

    def add_vm(self):
        """Add VM number vm_count+1 on the bridge; returns its index (1-based)."""
        i = self.vm_count + 1
        if 10 + i > 254:
            raise ValueError("too many VMs")
        ns, port = self.vm_ns(i), "p-vm%d" % i
        self._add_ns(ns)
        self._veth(self.ns_switch, port, 200 + 2 * i, None, ns, VM_IF, 201 + 2 * i, None)
        self._ip(self.ns_switch, "link", "set", port, "master", BRIDGE, "up")
        self._ip(ns, "addr", "add", "%s/%d" % (self.vm_ip(i), PRIV_PREFIXLEN), "dev", VM_IF)
        self._ip(ns, "link", "set", VM_IF, "up")
        self._ip(ns, "route", "add", "default", "via", ROUTER_PRIV_IP)
        self.vm_count = i
        self._wait_up([self.ns_switch, ns])
        return i

    def destroy_router(self):
        """Simulate the router going down: its namespace (rules, addresses, conntrack) vanishes.

        The veths are deleted first because that is synchronous; a dying namespace frees its
        devices asynchronously, and rebuild would then collide with the old peers.
        """
        self._kill_procs(self.ns_router)
        for dev in (self.router_pub_if, self.router_priv_if):
            self._ip(self.ns_router, "link", "del", dev, check=False)
        self._del_ns(self.ns_router)

    def rebuild_router(self):
        """Bring the router back as after a reboot: same links, MACs and base addresses only."""
        if self.ns_router in list_netns():
            raise RuntimeError("router namespace still exists; call destroy_router() first")
        self._build_router()

    # ------------------------------------------------------------ traffic

    def traffic_argv(self, *args):
        # by path, not `-m`: the tests package need not be importable from the namespace's cwd
        return [sys.executable, "-u", _TRAFFIC] + [str(a) for a in args]

    def start_server(self, ns, name, tcp_port=None, udp_port=None, max_seconds=600):
        """Start `traffic serve` in `ns` and wait for its "ready" line."""
        args = ["serve", "--name", name, "--max-seconds", max_seconds]
        if tcp_port:
            args += ["--tcp", tcp_port]
        if udp_port:
            args += ["--udp", udp_port]
        proc = self.popen(ns, self.traffic_argv(*args), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return Server(self, ns, name, proc)

    def _probe(self, kind, ns, host, port, timeout, send):
        p = self.run(ns, self.traffic_argv(kind, host, port, "--timeout", timeout, "--send", send),
                     timeout=timeout + 10, check=False)
        try:
            return json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"ok": False, "reply": None, "errno": None,
                    "error": "probe helper failed rc=%d: %s" % (p.returncode, p.stderr.strip())}

    def tcp_probe(self, ns, host, port, timeout=2.0, send="probe"):
        """Connect from `ns`, send a line, return {"ok", "reply", "error", "errno"}."""
        return self._probe("tcp-probe", ns, host, port, timeout, send)

    def udp_probe(self, ns, host, port, timeout=2.0, send="probe"):
        return self._probe("udp-probe", ns, host, port, timeout, send)

    def tcp_session(self, ns, host, port, timeout=2.0):
        """Open a held connection; check `.connected["ok"]`, then `.send(text)` repeatedly."""
        proc = self.popen(ns, self.traffic_argv("tcp-session", host, port, "--timeout", timeout),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
        return TcpSession(self, proc, timeout)

    def ping(self, ns, host, count=1):
        """True if `count` pings (1 s timeout each) get an answer."""
        p = self.run(ns, ["ping", "-n", "-q", "-c", str(count), "-W", "1", host],
                     timeout=count * 2 + 5, check=False)
        return p.returncode == 0

    def neigh(self, ns, dev=None):
        """Neighbour entries (`ip -j neigh`): dicts with dst, dev, lladdr, state."""
        out = self._ip(ns, "-j", "neigh", "show", *(("dev", dev) if dev else ())).stdout.strip()
        return json.loads(out) if out else []

    def garp(self, addr, dev=None):
        """Gratuitous ARP for `addr` from the router, so clients drop a FAILED entry at once."""
        self.run(self.ns_router, ["arping", "-q", "-U", "-c", "1", "-I",
                                  dev or self.router_pub_if, addr], check=False)

    # ------------------------------------------------------------ cleanup

    def _stop_proc(self, proc, timeout=5.0, terminate=False):
        """Ask `proc` to stop: close its stdin (our helpers exit on EOF) or, with
        `terminate`, SIGTERM (daemons such as keepalived and etcd; a last etcd member may
        ignore it, NOTES.md); SIGKILL after `timeout`; forgotten by the cleanup either way."""
        if terminate:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        else:
            try:
                if proc.stdin and not proc.stdin.closed:
                    proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def _kill_procs(self, ns=None):
        for n, p in list(self._procs):
            if ns is None or n == ns:
                if p.poll() is None:
                    p.kill()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
                self._procs.remove((n, p))

    def close(self):
        """Kill our processes, delete every namespace we made, release the run's lock."""
        if self._closed:
            return
        self._closed = True
        try:
            self._kill_procs()
            for ns in list(self._namespaces):
                self._del_ns(ns)
        finally:
            try:
                os.unlink(os.path.join(LOCK_DIR, self.prefix + ".lock"))
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
            os.close(self._lock_fd)
            atexit.unregister(self.close)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
