"""An in-memory etcd v3 JSON gateway (kv range/put/txn with revisions, the watch of past
revisions, compaction) for unit tests of the etcd store: several stores share one to
stand for several daemons."""

import base64

from one_ipfloater.etcdstore import StoreUnavailable


def _d(text):
    return base64.b64decode(text).decode() if text else ""


def _e(text):
    return base64.b64encode(text.encode()).decode()


class FakeEtcd:
    """Keys -> (value, create_revision, mod_revision); `down` makes every call fail as an
    unreachable cluster does; `calls` counts them by path."""

    def __init__(self):
        self.kv = {}
        self.revision = 1
        self.down = False
        self.calls = {}
        self.leases = {}  # lease ID -> TTL (0 once expired or revoked)
        self.leased = {}  # key -> its lease
        self.events = []  # (revision, event) of every put and delete, as the watch sends them
        self.compacted = 0  # revisions before it are gone from `events`
        self.watch_stalls = False  # the watch answers `created`, then nothing (a timeout)
        self.watches = []  # the start_revision of every watch asked for

    def compact(self, revision):
        """etcd's compaction: a watch from before `revision` is canceled."""
        self.compacted = revision
        self.events = [(rev, ev) for rev, ev in self.events if rev >= revision]

    def expire(self, lease):
        """The lease ends (not kept alive, or revoked): its keys go, as in etcd."""
        self.leases[lease] = 0
        for key in [k for k, held in self.leased.items() if held == lease]:
            self.kv.pop(key, None)
            del self.leased[key]

    def _header(self):
        return {"header": {"revision": str(self.revision)}}

    def _select(self, body):
        key = _d(body["key"])
        if "range_end" in body:
            end = _d(body["range_end"])
            return sorted(k for k in self.kv if key <= k < end)
        return [key] if key in self.kv else []

    def _range(self, body):
        keys = self._select(body)
        out = self._header()
        if body.get("min_mod_revision") and not body.get("count_only"):  # (etcd: filtered, then limited)
            keys = [k for k in keys if self.kv[k][2] >= int(body["min_mod_revision"])]
        limit = int(body.get("limit", 0))
        if limit and len(keys) > limit:
            keys, out["more"] = keys[:limit], True
        if body.get("count_only"):
            out["count"] = str(len(keys))
            return out
        if keys:
            out["kvs"] = [{"key": _e(k), "value": _e(self.kv[k][0]), "create_revision": str(self.kv[k][1]),
                           "mod_revision": str(self.kv[k][2])} for k in keys]
            out["count"] = str(len(keys))
        return out

    def _apply(self, op):
        if "request_put" in op:
            key, value = _d(op["request_put"]["key"]), _d(op["request_put"]["value"])
            created = self.kv[key][1] if key in self.kv else self.revision
            self.kv[key] = (value, created, self.revision)
            self.events.append((self.revision, {"kv": {"key": _e(key), "value": _e(value),
                                                       "create_revision": str(created),
                                                       "mod_revision": str(self.revision)}}))
        elif "request_delete_range" in op:
            for key in self._select(op["request_delete_range"]):
                del self.kv[key]
                self.events.append((self.revision, {"type": "DELETE",
                                                    "kv": {"key": _e(key), "mod_revision": str(self.revision)}}))

    def _holds(self, cmp):
        key = _d(cmp["key"])
        have = self.kv[key][2] if key in self.kv else 0
        want = int(cmp["mod_revision"])
        return {"LESS": have < want, "EQUAL": have == want, "GREATER": have > want}[cmp.get("result", "EQUAL")]

    def watch(self, body):
        """Gateway.watch: `created`, then the events from start_revision in the watched
        range, one message per revision (etcd may batch several), or the cancel of a
        compacted start."""
        self.calls["/v3/watch"] = self.calls.get("/v3/watch", 0) + 1
        if self.down:
            raise StoreUnavailable("http://fake:2379/v3/watch: ConnectTimeout")
        req = body["create_request"]
        start = int(req["start_revision"])
        self.watches.append(start)
        yield {**self._header(), "created": True}
        if start < self.compacted:
            yield {"header": {}, "canceled": True, "compact_revision": str(self.compacted)}
            return
        if self.watch_stalls:
            raise StoreUnavailable("http://fake:2379/v3/watch: ReadTimeout")
        low, high = _d(req["key"]), _d(req["range_end"])
        by_rev = {}
        for rev, ev in self.events:
            if rev >= start and low <= _d(ev["kv"]["key"]) < high:
                by_rev.setdefault(rev, []).append(ev)
        for rev in sorted(by_rev):
            yield {**self._header(), "events": by_rev[rev]}
        raise StoreUnavailable("http://fake:2379/v3/watch: ReadTimeout")  # (no more: it waits)

    def call(self, path, body):
        self.calls[path] = self.calls.get(path, 0) + 1
        if self.down:
            raise StoreUnavailable("etcd unavailable (http://fake:2379: ConnectTimeout)")
        if path == "/v3/kv/range":
            return self._range(body)
        if path == "/v3/kv/put":
            self.revision += 1
            self._apply({"request_put": body})
            if body.get("lease"):
                self.leased[_d(body["key"])] = body["lease"]
            return self._header()
        if path == "/v3/lease/grant":
            self.leases[str(len(self.leases) + 100)] = int(body["TTL"])
            return {**self._header(), "ID": str(len(self.leases) + 99), "TTL": str(body["TTL"])}
        if path == "/v3/lease/keepalive":
            ttl = self.leases.get(body["ID"], 0)
            return {"result": {**self._header(), "ID": body["ID"], **({"TTL": str(ttl)} if ttl else {})}}
        if path == "/v3/lease/revoke":
            self.expire(body["ID"])
            return self._header()
        if path == "/v3/kv/txn":
            ok = all(self._holds(c) for c in body.get("compare", []))
            ops = body.get("success" if ok else "failure") or []
            assert len(ops) <= 128, "etcd refuses a txn of more than 128 operations"
            responses = [{"response_range": self._range(op["request_range"])} for op in ops if "request_range" in op]
            writes = [op for op in ops if "request_range" not in op]
            if writes:
                self.revision += 1
                for op in writes:
                    self._apply(op)
            return {**self._header(), "succeeded": ok, "responses": responses}
        raise AssertionError(f"unexpected path {path}")
