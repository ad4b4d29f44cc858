"""The high-availability lab: two routers of one group under keepalived, in `ip netns`.

    [client] .66 --- .65 [upstream]  route 203.0.113.0/24 via 198.51.100.10 (public VIP)
                              | .1
                 [pubsw] br0: public segment 198.51.100.0/26
                    | .2                    | .3
                  [r1] keepalived        [r2] keepalived      (+ ipfloaterd in each)
                    | 10.77.0.2             | 10.77.0.3
                 [privsw] br0: private segment 10.77.0.0/24, gateway VIP 10.77.0.1
                    |                       |
                  [vm1] 10.77.0.11        [vm2] 10.77.0.12
    and [mgmtsw] br0: 10.79.0.0/24 with r1 .1, r2 .2 and three etcd members .11-.13.

Why it looks like this (README "High availability", and netfilter NOTES.md on keepalived):
- Routed pool: the upstream router routes the pool to the public VRRP address, so only
  keepalived's two addresses move on a failover; the floating addresses are on no link.
- On-link pool (`HaLab(onlink=True)`): the upstream has the pool on pub0 instead
  (`203.0.113.0/24 dev pub0`) and ARPs for each floating address; the daemons run
  HA_MODE onlink with PUBLIC_INTERFACE pub0, so the /32s follow the master.
- Every bridge is in a namespace of its own (as switches are), so that a router's
  conntrack never sees the other router's or the bridged traffic.
- "The master's links go down" is a cable pull: the switch ports of the router go down,
  the router itself (its conntrack, its daemon, its keepalived) lives on, as a router
  cut off by a switch or cabling fault does, and comes back with its old state.
- Both daemons hold the same associations (the lab gives them through both APIs, or,
  with store="etcd", the shared state feeds both), so the standby forwards the moment it
  is master.
Every process the lab starts, it stops; nothing is created in the root namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import netlab
from tests.support.daemonproc import DaemonProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
STREAM = HERE / "stream.py"
NOTIFY_SCRIPT = REPO / "etc" / "keepalived" / "ipfloater-notify"
EXAMPLE_CONF = REPO / "etc" / "keepalived" / "keepalived.conf"
DROPIN = REPO / "etc" / "keepalived" / "keepalived.service.d" / "ipfloaterd.conf"

CLIENT_IP, UPSTREAM_CLIENT_IP = "198.51.100.66", "198.51.100.65"
PUB_PREFIX, UPSTREAM_PUB_IP, PUBLIC_VIP = 26, "198.51.100.1", "198.51.100.10"
PRIV_PREFIX, PRIVATE_VIP = 24, "10.77.0.1"
MGMT_PREFIX = 24
POOL = "203.0.113.0/24"
IP_POOL = "203.0.113.10-203.0.113.40"
ROUTERS = ("r1", "r2")
FIP, VM, PORT = "203.0.113.10", 1, 8080  # the floating IP the flows go through, to vm1
FLOW_BOUND = 15.0  # seconds within which traffic must flow again (a bound, not the figure)
# HaLab(groups=True): r1 alone is group a, r2 alone group b; pool -> (IP_POOL, the upstream's
# route for it, its group); vm1's gateway is r1, vm2's r2 (no keepalived, no VIPs)
GROUP_POOLS = {"default": ("203.0.113.10-203.0.113.25", "203.0.113.0/27", "a"),
               "pb": ("203.0.113.33-203.0.113.46", "203.0.113.32/27", "b")}
ROUTER_GROUPS = {"r1": "a", "r2": "b"}


def router_pub_ip(i):
    return "198.51.100.%d" % (1 + i)


def router_priv_ip(i):
    return "10.77.0.%d" % (1 + i)


def router_mgmt_ip(i):
    return "10.79.0.%d" % i


def etcd_ip(k):
    return "10.79.0.%d" % (10 + k)


def vm_ip(j):
    return "10.77.0.%d" % (10 + j)


def keepalived_conf(name, advert_int, unicast=True, notify=None, config=None, env=None, without=()):
    """keepalived.conf of router `name`, made from the shipped example
    (etc/keepalived/keepalived.conf: router A; the lines marked "# B: VALUE" differ on B), so
    that the lab runs what operators are told to install. The lab changes only advert_int,
    the notify command (the repository's script, this lab's ipfloaterd and config) and, for
    multicast, drops the unicast lines; `notify=None` drops the notify lines, `without` the
    notify lines of those states (e.g. ("stop",))."""
    out, skip_block = [], False
    for line in EXAMPLE_CONF.read_text(encoding="utf-8").splitlines():
        code, _, comment = line.partition("#")
        marked = re.match(r"\s*B:\s*(\S+)", comment)
        if marked and name == "r2":
            tokens = code.split()
            code = code.replace(tokens[-1], marked.group(1))
        code = code.rstrip()
        if skip_block:
            skip_block = code.strip() != "}"
            continue
        if not unicast and code.strip().startswith("unicast_"):
            skip_block = code.strip().endswith("{")
            continue
        if code.strip().startswith("advert_int"):
            code = f"    advert_int {advert_int}"
        if code.strip().startswith("notify_"):
            if not notify:
                continue
            state = code.split()[0][len("notify_"):]
            if state in without:
                continue
            prefix = "/usr/bin/env " + " ".join(f"{k}={v}" for k, v in (env or {}).items())
            code = f'    notify_{state} "{prefix} /bin/sh {notify} {state} {config}"'
        if code.strip():
            out.append(code)
    return "\n".join(out) + "\n"


class HaLab(netlab.Lab):
    """The namespaces above, keepalived and ipfloaterd in both routers, etcd optional.

    HaLab(advert_int=0.2, notify=True, etcd=False) as a context manager. `notify=False`
    leaves keepalived's notify scripts out (the daemons never hear their state, no
    conntrack flush): the negative control of the fail-back trap. `routers=False` builds
    the network and etcd only. Logs (keepalived, notify, daemons, etcd) are in a work
    directory per router that is removed at the end unless HALAB_KEEP=1."""

    def __init__(self, advert_int=0.2, unicast=True, notify=True, etcd=False, vms=2,
                 nat_backend="nftables", workdir=None, routers=True, onlink=False, garp=True,
                 ha_mode=None, store="sqlite", daemon_settings=None, groups=False, notify_stop=True):
        self.advert_int, self.unicast, self.notify, self.vms = advert_int, unicast, notify, vms
        self.notify_stop = notify_stop  # False: keepalived.conf without notify_stop (a control)
        self.groups = groups  # two router groups of one router each on the lab's etcd (GROUP_POOLS)
        if groups:
            etcd, store = True, "etcd"
        # onlink: the upstream has the pool on the public segment and ARPs for each floating
        # address; the daemons run HA_MODE onlink (or `ha_mode`, for a negative control) with
        # the /32s on pub0, and GRATUITOUS_ARP as `garp` says
        self.onlink, self.garp = onlink, garp
        self.ha_mode = ha_mode or ("onlink" if onlink else None)
        # store="etcd": both daemons share their state in the lab's etcd (STATE_STORE = etcd)
        self.store, self.daemon_settings = store, dict(daemon_settings or {})
        self.nat_backend = nat_backend
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="halab-"))
        self.daemons: dict[str, DaemonProcess] = {}
        self.keepalived: dict[str, subprocess.Popen] = {}
        self.etcd: dict[int, subprocess.Popen] = {}
        self._ifindex = 100
        super().__init__(vms=0)  # Lab's topology is replaced: see _build_router
        try:
            for _ in range(vms):
                self.add_vm()
            if etcd:
                self.start_etcd()
            for name in ROUTERS if routers else ():
                self.start_daemon(name)
            if routers and not groups:  # r1 first: with nopreempt, whoever is master first stays master
                self.start_keepalived("r1")
                self.wait_master("r1")
                self.start_keepalived("r2")
                self.wait_entered("r2", "BACKUP", 1)
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------- topology

    def ns(self, name):
        """Our namespace called `name`; the private segment's switch is Lab's "switch"."""
        return self.prefix + ("switch" if name == "privsw" else name)

    def _next_index(self):
        self._ifindex += 2
        return self._ifindex

    def _link(self, ns, name, peer_ns, peer, mac=None):
        index = self._next_index()
        self._veth(ns, name, index, mac, peer_ns, peer, index + 1, None)

    def _port(self, switch, port, peer_ns, peer_if):
        """A veth from `peer_ns` (peer_if) into the bridge of namespace `switch`."""
        self._link(self.ns(switch), port, peer_ns, peer_if)
        self._ip(self.ns(switch), "link", "set", port, "master", netlab.BRIDGE, "up")

    def _addr_up(self, ns, ifname, cidr):
        self._ip(ns, "addr", "add", cidr, "dev", ifname)
        self._ip(ns, "link", "set", ifname, "up")

    def _build_router(self):
        """(Called by Lab.__init__.) The whole HA topology instead of the single router."""
        self.ns_client = self.ns("client")
        self.ns_router = self.ns("r1")  # Lab's helpers that name one router mean the first
        # Lab.__init__ made self.ns_switch with its bridge: the private segment (add_vm)
        self.router_priv_ip = PRIVATE_VIP
        up, client = self.ns("upstream"), self.ns_client
        for name in ("upstream", "pubsw", "mgmtsw", "r1", "r2"):
            self._add_ns(self.ns(name))
        for sw in ("pubsw", "mgmtsw"):
            self._ip(self.ns(sw), "link", "add", "name", netlab.BRIDGE, "type", "bridge")
            self._ip(self.ns(sw), "link", "set", netlab.BRIDGE, "up")
        # client -- upstream
        self._link(up, "cl0", client, "eth0")
        self._addr_up(up, "cl0", f"{UPSTREAM_CLIENT_IP}/{PUB_PREFIX}")
        self._addr_up(client, "eth0", f"{CLIENT_IP}/{PUB_PREFIX}")
        self._ip(client, "route", "add", "default", "via", UPSTREAM_CLIENT_IP)
        # upstream -- public segment; the pool is routed to the public VIP
        self._port("pubsw", "p-up", up, "pub0")
        self._addr_up(up, "pub0", f"{UPSTREAM_PUB_IP}/{PUB_PREFIX}")
        self._sysctl(up, "net.ipv4.ip_forward=1")
        if self.groups:  # each group's pool to its router
            for _pool, (_range, net, group) in GROUP_POOLS.items():
                r = ROUTERS.index(next(n for n, g in ROUTER_GROUPS.items() if g == group)) + 1
                self._ip(up, "route", "add", net, "via", router_pub_ip(r))
        elif self.onlink:  # the upstream ARPs for each floating address on the segment
            self._ip(up, "route", "add", POOL, "dev", "pub0")
        else:
            self._ip(up, "route", "add", POOL, "via", PUBLIC_VIP)
        for i, name in enumerate(ROUTERS, 1):
            r = self.ns(name)
            self._sysctl(r, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                         "net.ipv4.conf.default.rp_filter=0")
            self._port("pubsw", f"p-{name}", r, "pub0")
            self._addr_up(r, "pub0", f"{router_pub_ip(i)}/{PUB_PREFIX}")
            self._port("privsw", f"p-{name}", r, "priv0")
            self._addr_up(r, "priv0", f"{router_priv_ip(i)}/{PRIV_PREFIX}")
            self._port("mgmtsw", f"p-{name}", r, "mgmt0")
            self._addr_up(r, "mgmt0", f"{router_mgmt_ip(i)}/{MGMT_PREFIX}")
            self._ip(r, "route", "add", "default", "via", UPSTREAM_PUB_IP)
        self._wait_up([client, up, self.ns("pubsw"), self.ns_switch, self.ns("mgmtsw"),
                       self.ns("r1"), self.ns("r2")])

    def add_vm(self):
        """A VM on the private segment whose gateway is the private VIP."""
        i = self.vm_count + 1
        ns, port = self.vm_ns(i), "p-vm%d" % i
        self._add_ns(ns)
        self._link(self.ns_switch, port, ns, netlab.VM_IF)
        self._ip(self.ns_switch, "link", "set", port, "master", netlab.BRIDGE, "up")
        self._addr_up(ns, netlab.VM_IF, f"{vm_ip(i)}/{PRIV_PREFIX}")
        gateway = router_priv_ip(1 + (i - 1) % len(ROUTERS)) if self.groups else PRIVATE_VIP
        self._ip(ns, "route", "add", "default", "via", gateway)
        self.vm_count = i
        self._wait_up([self.ns_switch, ns])
        return i

    def vm_ip(self, i):
        return vm_ip(i)

    # -------------------------------------------------------------- failures

    def cut_links(self, name):
        """Pull the router's private and public cables (switch ports down).

        The private one (keepalived's adverts) first: the router's keepalived, seeing a
        link go, would otherwise announce priority 0 on the other one and hand over at
        once; a router that dies announces nothing and its peer has to notice."""
        for sw in ("privsw", "pubsw"):
            self._ip(self.ns(sw), "link", "set", f"p-{name}", "down")

    def restore_links(self, name):
        for sw in ("pubsw", "privsw"):
            self._ip(self.ns(sw), "link", "set", f"p-{name}", "up")

    def cut_store_link(self, name):
        """Cut the router off from etcd only (its management port down): a partition
        in which it keeps forwarding and stays in its VRRP group."""
        self._ip(self.ns("mgmtsw"), "link", "set", f"p-{name}", "down")

    def restore_store_link(self, name):
        self._ip(self.ns("mgmtsw"), "link", "set", f"p-{name}", "up")

    # -------------------------------------------------------------- ipfloaterd

    def start_daemon(self, name):
        d = self.daemons.get(name)
        if d is None:
            edge = {"PUBLIC_INTERFACE": "pub0", "HA_MODE": self.ha_mode,
                    "GRATUITOUS_ARP": "yes" if self.garp else "no"} if self.onlink else {"PUBLIC_INTERFACE": ""}
            settings = {"IP_POOL": IP_POOL, "PRIVATE_IP_RANGES": "10.77.0.0/24",
                        "NAT_BACKEND": self.nat_backend, "LOG_LEVEL": "INFO", **edge}
            if self.store == "etcd":
                settings.update(STATE_STORE="etcd", ETCD_TIMEOUT="1", ETCD_POLL_INTERVAL="0.2",
                                ETCD_ENDPOINTS=",".join(f"http://{etcd_ip(k)}:2379" for k in (1, 2, 3)))
            d = DaemonProcess(self.ns(name), self.workdir / name, **{**settings, **self.daemon_settings})
            self.daemons[name] = d
            if self.groups:
                self.set_group(name, ROUTER_GROUPS[name])
        return d.start()

    def set_group(self, name, group):
        """Router `name`'s config with the lab's two pools, in `group` (None: no group keys
        at all, so it applies every pool: the negative control); for its next start."""
        d = self.daemons[name]
        for key in ("ROUTER_GROUP", "IP_POOL_ROUTER_GROUP"):
            d.settings.pop(key, None)
        d.settings.update(IP_POOL=GROUP_POOLS["default"][0], ROUTER_NAME=name)
        if group:
            d.settings.update(ROUTER_GROUP=group, IP_POOL_ROUTER_GROUP=GROUP_POOLS["default"][2])
        d.extra_config = "".join(f"[POOL {pool}]\nIP_POOL = {addrs}\n" + (f"ROUTER_GROUP = {g}\n" if group else "")
                                 for pool, (addrs, _net, g) in GROUP_POOLS.items() if pool != "default")

    def live_pairs(self, name):
        """The (public, private) pairs router `name`'s kernel holds, read back by the
        daemon's own backend code (changes nothing)."""
        code = ("import json,sys\nfrom one_ipfloater.config import load_config\n"
                "from one_ipfloater.daemon import make_backend\nc=load_config(sys.argv[1])\n"
                "print(json.dumps(sorted([str(a), str(b)] for a, b in make_backend(c).live_pairs())))\n")
        p = self.run(self.ns(name), [sys.executable, "-c", code, str(self.daemons[name].config_path)], timeout=30)
        return {tuple(pair) for pair in json.loads(p.stdout)}

    def associate_everywhere(self, public_ip, private_ip):
        """The same association on both routers (the shared store's job, later)."""
        for name in ROUTERS:
            proc = self.daemons[name].cli("redirect", public_ip, private_ip)
            if proc.returncode != 0:
                raise RuntimeError(f"redirect on {name}: {proc.stderr.strip()}")

    def ha_state(self, name):
        """The daemon's view of keepalived's state (GET /v1/health), None if it is down."""
        d = self.daemons[name]
        if not d.running():
            return None
        proc = d.cli("--json", "health", timeout=10)
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout).get("ha_state", {}).get("state")

    # -------------------------------------------------------------- keepalived

    def start_keepalived(self, name):
        wd = self.workdir / name
        wd.mkdir(parents=True, exist_ok=True)
        conf = keepalived_conf(name, self.advert_int, self.unicast,
                               NOTIFY_SCRIPT if self.notify else None,
                               self.daemons[name].config_path if name in self.daemons else None,
                               self._notify_env(name), without=() if self.notify_stop else ("stop",))
        (wd / "keepalived.conf").write_text(conf, encoding="utf-8")
        log = open(wd / "keepalived.log", "ab")
        try:
            proc = self.popen(self.ns(name), [
                "keepalived", "-P", "-n", "-l", "-D", "-G", "-f", str(wd / "keepalived.conf"),
                "-p", str(wd / "keepalived.pid"), "-r", str(wd / "vrrp.pid"), "-c", str(wd / "checkers.pid")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self.keepalived[name] = proc
        return proc

    def _notify_env(self, name):
        return {"IPFLOATERD": str(Path(sys.executable).with_name("ipfloaterd")),
                "IPFLOATER_NOTIFY_LOG": str(self.workdir / name / "notify.log")}

    def stop_keepalived(self, name, timeout=10.0):
        """SIGTERM; then, with notify_stop, until its notify has been answered (it runs in a
        session of its own and outlives keepalived: the lab's cleanup must not race it)."""
        proc = self.keepalived.pop(name, None)
        if proc is None:
            return
        told = sum(e.get("state") == "stop" for e in self.notify_events(name))
        self._stop_proc(proc, timeout, terminate=True)
        deadline = time.monotonic() + 15.0
        while (self.notify and self.notify_stop and name in self.daemons and time.monotonic() < deadline
               and sum(e.get("state") == "stop" for e in self.notify_events(name)) == told):
            time.sleep(0.05)

    def kill_keepalived(self, name, timeout=10.0):
        """keepalived crashes: SIGKILL to all its processes at once (the parent stopped
        first, so that it neither restarts its VRRP child nor outlives it): no notify runs,
        its VRRP addresses stay where they are."""
        proc = self.keepalived.pop(name)
        os.kill(proc.pid, signal.SIGSTOP)
        for pid in _descendants(proc.pid):
            os.kill(pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def exec_stop_post(self, name):
        """What systemd runs after any end of keepalived: the shipped drop-in's ExecStopPost
        (etc/keepalived/keepalived.service.d/ipfloaterd.conf), with the lab's script, program
        and config in place of the installed paths, as the lab's keepalived.conf has them."""
        lines = [line.split("=", 1)[1].split() for line in DROPIN.read_text(encoding="utf-8").splitlines()
                 if line.startswith("ExecStopPost=")]
        if len(lines) != 1 or len(lines[0]) != 3 or Path(lines[0][0]).name != NOTIFY_SCRIPT.name:
            raise AssertionError(f"{DROPIN}: expected one 'ExecStopPost={NOTIFY_SCRIPT.name} STATE CONFIG', "
                                 f"got {lines}")
        env = [f"{k}={v}" for k, v in self._notify_env(name).items()]
        return self.run(self.ns(name), ["/usr/bin/env", *env, "/bin/sh", str(NOTIFY_SCRIPT), lines[0][1],
                                        str(self.daemons[name].config_path)], timeout=30)

    def holds_vips(self, name):
        """Which of keepalived's two addresses router `name` holds now."""
        out = self._ip(self.ns(name), "-j", "-4", "addr", "show").stdout
        have = {a["local"] for link in json.loads(out) for a in link.get("addr_info", ())}
        return {PUBLIC_VIP, PRIVATE_VIP} & have

    def holders(self):
        """{router: number of VIPs held} for the routers holding any."""
        return {n: len(v) for n in ROUTERS if (v := self.holds_vips(n))}

    def floating_holders(self):
        """{router: sorted pool addresses on its pub0} for the routers holding any (on-link)."""
        held = {}
        for name in ROUTERS:
            out = self._ip(self.ns(name), "-j", "-4", "addr", "show", "dev", "pub0").stdout
            have = sorted(a["local"] for link in json.loads(out) for a in link.get("addr_info", ())
                          if a.get("prefixlen") == 32 and a["local"].startswith("203.0.113."))
            if have:
                held[name] = have
        return held

    def wait_floating(self, expected, timeout=15.0, poll=0.02):
        """Until floating_holders() == expected; the time (time.time()) it was seen."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.floating_holders()
            if seen == expected:
                return time.time()
            time.sleep(poll)
        raise AssertionError(f"floating addresses held as {seen}, not {expected}, after {timeout:g} s; "
                             f"notify logs: {self.notify_log('r1')[-1500:]} / {self.notify_log('r2')[-1500:]}")

    def wait_master(self, name, timeout=15.0, poll=0.02):
        """Until `name` alone holds both VIPs; returns the time (time.time()) it was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.holders() == {name: 2}:
                return time.time()
            time.sleep(poll)
        raise AssertionError(f"{name} is not the only master after {timeout:g} s: {self.holders()}\n"
                             + self.keepalived_log(name)[-3000:])

    def wait_ha_state(self, name, state, timeout=15.0):
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.ha_state(name)
            if seen == state:
                return
            time.sleep(0.05)
        raise AssertionError(f"{name}'s daemon reports HA state {seen!r}, not {state!r} after {timeout:g} s; "
                             f"notify log: {self.notify_log(name)[-2000:]}")

    def entered(self, name, state):
        """How often router `name`'s keepalived entered `state` (MASTER, BACKUP, FAULT)."""
        return self.keepalived_log(name).count(f"Entering {state} STATE")

    def wait_entered(self, name, state, count, timeout=15.0):
        """Until keepalived of `name` entered `state` `count` times; the time seen."""
        deadline = time.monotonic() + timeout
        while self.entered(name, state) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}'s keepalived did not enter {state} (x{count}) in {timeout:g} s:\n"
                                     + self.keepalived_log(name)[-3000:])
            time.sleep(0.02)
        return time.time()

    def keepalived_log(self, name):
        try:
            return (self.workdir / name / "keepalived.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def notify_log(self, name):
        try:
            return (self.workdir / name / "notify.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def notify_events(self, name):
        """The JSON lines `ipfloaterd ha-state` printed for router `name`'s notify scripts."""
        events = []
        for line in self.notify_log(name).splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
        return events

    # -------------------------------------------------------------- etcd

    def start_etcd(self, members=3):
        """Three members, each in its own namespace on the management segment."""
        cluster = ",".join(f"e{k}=http://{etcd_ip(k)}:2380" for k in range(1, members + 1))
        for k in range(1, members + 1):
            ns = self.ns(f"etcd{k}")
            self._add_ns(ns)
            self._port("mgmtsw", f"p-etcd{k}", ns, "eth0")
            self._addr_up(ns, "eth0", f"{etcd_ip(k)}/{MGMT_PREFIX}")
        self._wait_up([self.ns("mgmtsw")] + [self.ns(f"etcd{k}") for k in range(1, members + 1)])
        for k in range(1, members + 1):
            self.start_etcd_member(k, cluster)

    def start_etcd_member(self, k, cluster=None):
        ip = etcd_ip(k)
        wd = self.workdir / f"etcd{k}"
        wd.mkdir(parents=True, exist_ok=True)
        cluster = cluster or getattr(self, "_etcd_cluster", None)
        self._etcd_cluster = cluster
        log = open(wd / "etcd.log", "ab")
        try:
            self.etcd[k] = self.popen(self.ns(f"etcd{k}"), [
                "etcd", "--name", f"e{k}", "--data-dir", str(wd / "data"),
                "--listen-peer-urls", f"http://{ip}:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
                "--listen-client-urls", f"http://{ip}:2379", "--advertise-client-urls", f"http://{ip}:2379",
                "--listen-metrics-urls", "", "--initial-cluster", cluster,
                "--initial-cluster-state", "new", "--initial-cluster-token", self.prefix + "etcd",
                "--heartbeat-interval", "100", "--election-timeout", "1000"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def stop_etcd_member(self, k, timeout=10.0):
        proc = self.etcd.pop(k, None)
        if proc is not None:
            self._stop_proc(proc, timeout, terminate=True)

    def etcd_call(self, from_ns, k, path, body, timeout=3.0):
        """POST to member k's JSON gateway from namespace `from_ns`: (status, JSON or None)."""
        code = ("import json,sys,urllib.request as u\n"
                "r=u.Request(sys.argv[1],data=sys.argv[2].encode(),headers={'Content-Type':'application/json'})\n"
                "try:\n"
                " with u.urlopen(r,timeout=float(sys.argv[3])) as a: print(a.status); print(a.read().decode())\n"
                "except Exception as e:\n"
                " print(getattr(e,'code',0)); print(json.dumps({'error':str(e)}))\n")
        p = self.run(from_ns, [sys.executable, "-c", code, f"http://{etcd_ip(k)}:2379{path}",
                               json.dumps(body), str(timeout)], timeout=timeout + 10, check=False)
        lines = p.stdout.strip().splitlines()
        try:
            return int(lines[0]), json.loads(lines[1])
        except (IndexError, ValueError):
            return 0, {"error": p.stderr.strip()}

    # -------------------------------------------------------------- traffic

    def start_stream(self, host, port, interval=0.05):
        """The long-lived TCP stream from the client; returns (proc, netlab._Lines)."""
        proc = self.popen(self.ns_client, [sys.executable, "-u", str(STREAM), host, str(port),
                                           "--interval", str(interval)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return Stream(self, proc)

    def start_ping(self, host, interval=0.05):
        proc = self.popen(self.ns_client, ["ping", "-n", "-D", "-O", "-i", str(interval), "-W", "1", host],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return PingTrain(self, proc)

    # -------------------------------------------------------------- cleanup

    def close(self):
        if getattr(self, "_closed", True):
            return
        try:
            for name in list(self.keepalived):
                self.stop_keepalived(name)
            for d in self.daemons.values():
                d.stop()
            for k in list(self.etcd):
                self.stop_etcd_member(k, timeout=3.0)
        finally:
            super().close()
            if self._own_workdir and os.environ.get("HALAB_KEEP") != "1":
                shutil.rmtree(self.workdir, ignore_errors=True)


def _descendants(pid):
    """The processes below `pid` (from /proc: children, their children...)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        todo += children
    return found


def outage(times, t):
    """The longest silence between consecutive answers ending after `t` (an event such as
    a cable pull at time `t`); None when nothing answered after `t`."""
    times = sorted(times)
    gaps = [b - a for a, b in zip(times, times[1:]) if b > t]
    return round(max(gaps), 3) if gaps else None


class Stream:
    """The client's TCP stream: replies as (n, t) as they come, read without sleeping."""

    def __init__(self, lab, proc):
        self.lab, self.proc = lab, proc
        self.lines = netlab._Lines(proc.stdout)
        self.replies: list[tuple[int, float]] = []
        self.errors: list[str] = []
        self.end = None
        first = self._read(10.0)
        if not first or first.get("event") != "connect":
            self.stop()
            raise RuntimeError(f"stream did not connect: {first}")

    def _read(self, timeout):
        try:
            line = self.lines.get(timeout)
        except netlab.queue.Empty:
            return None
        if line is None:
            return {"event": "eof"}
        event = json.loads(line)
        if event["event"] == "reply":
            self.replies.append((event["n"], event["t"]))
        elif event["event"] == "error":
            self.errors.append(event["error"])
        elif event["event"] == "end":
            self.end = event
        return event

    def wait_reply_after(self, t, count=1, timeout=15.0):
        """True once `count` replies arrived after time `t` (time.time()), within timeout."""
        deadline = time.monotonic() + timeout
        while sum(1 for _, rt in self.replies if rt > t) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            event = self._read(left)
            if event is not None and event["event"] in ("eof", "end"):
                return False
        return True

    def outage(self, t):
        """The longest silence (s) between two replies that spans or follows time `t`."""
        return outage([rt for _, rt in self.replies], t)

    def in_order(self):
        """Every reply arrived once and in order: the same connection carried on."""
        return [n for n, _ in self.replies] == list(range(1, len(self.replies) + 1))

    def stop(self):
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while self.end is None and time.monotonic() < deadline:
            event = self._read(max(0.0, deadline - time.monotonic()))
            if event is None or event["event"] == "eof":
                break
        self.lab._stop_proc(self.proc)
        return self.end


class PingTrain:
    """ping -D -i INTERVAL from the client: reply timestamps, read without sleeping."""

    def __init__(self, lab, proc):
        self.lab, self.proc = lab, proc
        self.lines = netlab._Lines(proc.stdout)
        self.replies: list[float] = []
        self.seqs: list[int] = []
        self.unanswered: set[int] = set()  # ping -O: "no answer yet for icmp_seq=N"
        self.transmitted = None

    def _read(self, timeout):
        try:
            line = self.lines.get(timeout)
        except netlab.queue.Empty:
            return None
        if line is None:
            return "eof"
        if " bytes from " in line and line.startswith("["):
            self.replies.append(float(line[1:line.index("]")]))
            self.seqs.append(int(line.split("icmp_seq=")[1].split()[0]))
        elif "no answer yet for icmp_seq=" in line:
            self.unanswered.add(int(line.split("icmp_seq=")[1].split()[0]))
        elif "packets transmitted" in line:
            self.transmitted = int(line.split()[0])
        return line

    def wait_reply_after(self, t, count=1, timeout=15.0):
        deadline = time.monotonic() + timeout
        while sum(1 for rt in self.replies if rt > t) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._read(left) == "eof":
                return False
        return True

    def outage(self, t):
        return outage(self.replies, t)

    def lost(self):
        """Echo requests unanswered between the first and the last answer."""
        if not self.seqs:
            return None
        answered = set(self.seqs)
        return len(set(range(min(answered), max(answered) + 1)) - answered)

    def stop(self):
        """SIGINT (ping prints its summary), then drain; returns (transmitted, received)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._read(max(0.0, deadline - time.monotonic())) in (None, "eof"):
                break
        self.lab._stop_proc(self.proc)
        return self.transmitted, len(self.replies)


class Flows:
    """A floating IP on both routers, an echo server on the VM behind it, and from the
    client a long-lived TCP stream and a ping train (every 50 ms) to it, both flowing."""

    def __init__(self, lab):
        self.lab = lab
        lab.associate_everywhere(FIP, lab.vm_ip(VM))
        self.server = lab.start_server(lab.vm_ns(VM), f"vm{VM}", tcp_port=PORT)
        self.stream = lab.start_stream(FIP, PORT)
        self.ping = lab.start_ping(FIP)
        self.wait_flowing(time.time())

    def wait_flowing(self, after, count=10, timeout=FLOW_BOUND):
        """Both flows answered `count` times after `after` (time.time())."""
        ok_stream = self.stream.wait_reply_after(after, count, timeout)
        ok_ping = self.ping.wait_reply_after(after, count, timeout)
        return ok_stream, ok_ping

    def stop(self):
        end = self.stream.stop()
        self.ping.stop()
        self.server.stop()
        return end
