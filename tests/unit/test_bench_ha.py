"""The pure pieces of the HA benchmarks (benchmarks/hafigures.py): VRRP's master-down
interval, when a probe's traffic flowed again, the split of one change's time, the
throughput of several client processes, and the report's rows."""

import json

import pytest

from benchmarks import hafigures as hf


def test_master_down_interval_is_three_adverts_plus_the_skew_of_the_backups_priority():
    assert hf.master_down_interval(1.0, 100) == pytest.approx(3 + 156 / 256)
    assert hf.master_down_interval(0.2, 100) == pytest.approx(0.6 + 0.2 * 156 / 256)
    # a higher priority waits less: the best backup takes over first
    assert hf.master_down_interval(1.0, 200) < hf.master_down_interval(1.0, 100)
    with pytest.raises(ValueError, match="priority: 0"):
        hf.master_down_interval(1.0, 0)


def test_resumed_after_is_the_end_of_the_longest_silence_after_the_cut():
    cut = 10.0
    # answers every 50 ms, a short hiccup before the cut, the outage after it, then flowing
    times = [9.80, 9.85, 9.90, 9.95, 10.02, 10.70, 10.75, 10.80, 11.5, 11.55]
    # the longest gap ending after the cut is 10.80 -> 11.5, not the first answer after the cut
    assert hf.resumed_after(times, cut) == pytest.approx(1.5)
    assert hf.resumed_after([9.8, 9.85, 10.5, 10.55], cut) == pytest.approx(0.5)
    assert hf.resumed_after([9.8, 9.9], cut) is None  # nothing after the cut
    assert hf.resumed_after([], cut) is None


def test_parse_changes_reads_only_the_timeline_lines_of_a_daemon_log():
    text = "\n".join([
        "2026-12-01 05:00:00 INFO allocated 100.64.16.0",
        json.dumps({"change": "allocate", "result": "ok", "total": 0.02, "commit_step": 0.01}),
        '{"change": broken',
        json.dumps({"change": "release", "result": "ok", "total": 0.03}),
    ])
    assert [r["change"] for r in hf.parse_changes(text)] == ["allocate", "release"]
    ups = hf.catch_ups(text + '\n{"catch_up": 0.25, "store_read": 0.1}\n{"catch_up": x}\n{"catch_up": 0.5}')
    assert hf.sum_catch_ups(ups) == {"catch_ups": 2, "catch_up_seconds": 0.75, "catch_up_read_seconds": 0.1,
                                     "catch_up_reconcile_seconds": 0.0, "catch_up_deltas": 0,
                                     "catch_up_watch_seconds": 0.0, "catch_up_apply_delta_seconds": 0.0,
                                     "catch_up_locked_delta_seconds": 0.0, "catch_up_flush_seconds": 0.0}
    deltas = hf.catch_ups('{"catch_up": 0.03, "store_delta": 0.01, "apply_delta": 0.002}')
    assert hf.sum_catch_ups(deltas)["catch_up_deltas"] == 1 and \
        hf.sum_catch_ups(deltas)["catch_up_watch_seconds"] == 0.01


def test_split_of_one_change_sums_to_its_total():
    record = {"change": "allocate", "result": "ok", "total": 0.020, "commit_step": 0.012, "apply": 0.002,
              "store_commit": 0.008, "flush": 0.005}
    parts = hf.split_change(record)
    assert parts["store_write"] == pytest.approx(0.002)
    assert parts["plan"] == pytest.approx(0.003)
    assert sum(parts[k] for k in hf.STEPS if k != "total") == pytest.approx(parts["total"])
    # a step it did not go through counts 0 (a no-op release: no commit step)
    assert hf.split_change({"total": 0.001})["plan"] == pytest.approx(0.001)


def test_split_medians_leaves_out_changes_that_did_not_succeed():
    ok = {"result": "ok", "total": 0.010, "commit_step": 0.006, "store_commit": 0.004, "apply": 0.001,
          "flush": 0.002}
    refused = {"result": "refused", "total": 5.0}
    medians = hf.split_medians([ok, ok, refused])
    assert medians["changes"] == 2
    assert medians["total"] == pytest.approx(10.0)
    assert medians["store_commit"] == pytest.approx(4.0)
    assert hf.split_medians([refused]) == {}


def test_throughput_of_several_processes_spans_the_first_start_to_the_last_end():
    outs = [{"calls": 100, "start": 1.0, "end": 6.0, "clients": 5, "calls_per_second": 20.0, "conflicts": 2},
            {"calls": 100, "start": 1.5, "end": 11.0, "clients": 5, "calls_per_second": 10.5, "conflicts": 1}]
    got = hf.combine_throughput(outs)
    assert got["calls_per_second"] == pytest.approx(200 / 10.0)  # not the sum of the two rates (30.5)
    assert got["clients"] == 10 and got["conflicts"] == 3


def _ha(etcd_ms=40.0, sqlite_ms=20.0):
    def side(ms, cps):
        return {"change": {"median_seconds": ms / 1000}, "start_rules_seconds": 0.5,
                "split": dict.fromkeys(hf.STEPS, 1.0), "throughput": {"calls_per_second": cps}}
    etcd = side(etcd_ms, 0) | {"throughput_one": {"calls_per_second": 50.0},
                               "throughput_two": {"calls_per_second": 40.0, "conflicts": 3, "replans": 7, "calls": 1000}}
    fail = {"advert_int": 0.2, "backup_priority": 100, "takeover_s": 0.6, "ping_resumed_s": 0.65,
            "tcp_resumed_s": 0.9, "daemon_told_s": 0.7, "ping_gap_s": 0.66, "tcp_gap_s": 0.92, "tcp_survived": True}
    return {"settings": {"reps": 1, "advert_ints": [0.2]}, "code": {"commit": "abc"},
            "etcd_runs": [{"rep": 0, "sqlite": side(sqlite_ms, 80.0), "etcd": etcd}], "failover_runs": [fail]}


def test_rows_give_each_figure_as_a_ratio_or_beside_its_same_run_baseline():
    rows = {f: (v, d) for f, v, d in hf.rows(_ha())}
    change = rows["E1. one change at 4,096 live, etcd (3 members) vs SQLite"]
    assert change[0] == "2.00 / 2.00 / 2.00 x" and "40.0 ms vs 20.0 ms" in change[1]
    two = rows["E2. throughput, 10 clients over two routers on etcd vs 10 on one router with SQLite"]
    assert two[0] == "0.50 / 0.50 / 0.50 x" and "3 `store_conflict` answers and 7 re-plans" in two[1]
    ping = rows["F. advert_int 0.2: master's cables pulled -> ping flows again"]
    assert ping[0] == "0.65 / 0.65 / 0.65 s"
    assert "takeover (VRRP address on the backup) 0.60 / 0.60 / 0.60 s" in ping[1]
    assert "added by the rest: 0.05 / 0.05 / 0.05 s" in ping[1] and "master-down interval 0.72 s" in ping[1]
    # a run without the HA part renders nothing; with it, a section with the table
    assert hf.markdown({}) == []
    md = "\n".join(hf.markdown({"ha": _ha()}))
    assert "## High availability and etcd" in md and "| store commit" in md
