"""The daemon's start notifications: systemd's notify socket and the --ready-fd pipe."""

import json
import os
import socket

from one_ipfloater.daemon import Supervisor


def test_ready_fd_gets_rules_then_ready_lines_and_is_closed(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    read_fd, write_fd = os.pipe()
    sup = Supervisor(write_fd)
    sup.rules_in_place(4096)
    sup.ready("127.0.0.1", 7003, 4096)
    lines = os.read(read_fd, 4096).decode().splitlines()
    assert os.read(read_fd, 10) == b""  # closed after "ready": end of file
    os.close(read_fd)
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["rules", "ready"]
    assert events[0]["associations"] == 4096 and events[1]["port"] == 7003
    assert all(e["pid"] == os.getpid() for e in events)


def test_systemd_notify_socket_gets_status_then_ready(monkeypatch, tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        sup = Supervisor(None)
        assert "NOTIFY_SOCKET" not in os.environ  # children (iptables-restore...) must not inherit it
        sup.rules_in_place(3)
        sup.ready("127.0.0.1", 7003, 3)
        first, second = listener.recv(1024).decode(), listener.recv(1024).decode()
    assert first == "STATUS=NAT rules of 3 associations in place"
    assert second.splitlines()[0] == "READY=1"


def test_without_supervisor_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sup = Supervisor(None)
    sup.rules_in_place(1)
    sup.ready("127.0.0.1", 1, 1)  # no fd, no socket: no error
