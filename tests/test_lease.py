"""The lease of a run directory holds through failed writes, is given up before another host could
take it, and is not fooled by a clock that runs ahead (issue 24's findings)."""

import os
import threading
import time

import pytest

from mnistlab import files, lease
from mnistlab.errors import DiskError


@pytest.fixture
def fast_beats(monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(lease, "LEASE_SECONDS", 1.0)


def test_a_failed_heartbeat_write_does_not_kill_the_heartbeat(tmp_path, fast_beats, monkeypatch):
    real, failures = files.write_json, {"left": 0}

    def flaky(path, obj):
        if path.name == "owner.json" and failures["left"] > 0:
            failures["left"] -= 1
            raise DiskError(f"{path}: could not be written: the disk is full.")
        real(path, obj)

    monkeypatch.setattr(lease, "write_json", flaky)
    with lease.Lease() as owner:
        owner.acquire(tmp_path)
        failures["left"] = 3  # the next three beats fail, as on a full disk
        first = files.read_json(tmp_path / "owner.json")["heartbeat"]
        deadline = time.time() + 5
        while files.read_json(tmp_path / "owner.json")["heartbeat"] == first:
            assert time.time() < deadline, "the heartbeat stopped after its first failed write"
            time.sleep(0.05)
        assert owner.thread.is_alive() and owner.lost is None


def test_a_lease_that_cannot_be_refreshed_is_given_up_before_it_expires(tmp_path, fast_beats,
                                                                        monkeypatch):
    def full(path, obj):
        raise DiskError(f"{path}: could not be written: the disk is full.")

    lost = threading.Event()
    with lease.Lease(on_lost=lost.set) as owner:
        owner.acquire(tmp_path)
        acquired = time.time()
        monkeypatch.setattr(lease, "write_json", full)
        assert lost.wait(5), "the owner kept training with a lease it could not refresh"
        assert time.time() - acquired < lease.LEASE_SECONDS + 0.5  # before others may take it
        assert "could not be written" in owner.lost


def test_a_lease_taken_over_by_another_writer_is_given_up(tmp_path, fast_beats):
    lost = threading.Event()
    with lease.Lease(on_lost=lost.set) as owner:
        owner.acquire(tmp_path)
        files.write_json(tmp_path / "owner.json", {"host": "elsewhere", "pid": 7, "token": "theirs",
                                                   "heartbeat": time.time()})
        assert lost.wait(5) and "pid 7 on host elsewhere" in owner.lost
    assert files.read_json(tmp_path / "owner.json")["token"] == "theirs"  # theirs is left alone


def test_a_heartbeat_from_the_future_does_not_hold_a_run_forever(tmp_path):
    ahead = {"host": "elsewhere", "pid": 1, "token": "t", "heartbeat": time.time() + 3600}
    files.write_json(tmp_path / "owner.json", ahead)  # a node whose clock ran an hour ahead
    assert lease.live_owner(tmp_path) is not None  # just written: alive
    old = time.time() - 2 * lease.LEASE_SECONDS
    os.utime(tmp_path / "owner.json", (old, old))  # and then it died
    assert lease.live_owner(tmp_path) is None


def test_resume_leaves_the_heartbeats_own_temporary_file(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    beat = tmp_path / ".owner.json.abc123.tmp"
    dead = tmp_path / "checkpoints" / ".last.pt.def456.tmp"
    beat.write_text("{}")
    dead.write_text("partial")
    assert files.remove_stale_tmp(tmp_path) == [dead]
    assert beat.exists() and not dead.exists()
