"""The malloc arena cap only works when set before any thread exists (glibc fixes the
limit when a second thread first allocates): `run` must set it before it starts one."""

import threading

import pytest

from one_ipfloater import daemon
from tests.fakes import fake_config


class ArenaLimitReached(Exception):
    pass


def test_arena_limit_comes_before_any_thread(monkeypatch, tmp_path):
    started = []
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self.name))

    def limit(arenas=1):
        raise ArenaLimitReached(list(started))

    monkeypatch.setattr(daemon, "limit_malloc_arenas", limit)
    with pytest.raises(ArenaLimitReached) as reached:
        daemon.run(fake_config(str(tmp_path / "state.db")))
    assert reached.value.args[0] == [], "threads started before the arena limit"

