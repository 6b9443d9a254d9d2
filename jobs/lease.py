"""Leases: one writer per table across every run on a lake, on both Delta backends.

Why Delta alone is not enough: a keyed write works out its new rows against a snapshot and appends them,
and the engines' tasks append their chunks; Delta never makes two appends conflict, so two runs started
together would both land the same keys. So a stage run leases every table (and output path) it writes
before it writes anything: one row per resource in the lake's `leases` table, taken by a conditional MERGE
(insert when absent; take over only a lease that is ours, expired, or held by a dead process on this host).
Two contenders' MERGEs conflict under Delta's optimistic concurrency; the loser's retry re-evaluates the
condition against the winner's row and takes nothing. The holder renews every heartbeat_s; a driver that
dies stops renewing and its leases lapse after ttl_s (at once when it was a process on this host).

A stage run also leases `run:<run_id>/<stage>`, which makes `runs` tell a dead run from a live one: a run
recorded `running` whose lease lapsed is marked `abandoned` by the next run.

A pipeline takes one lease for all its stages, on everything any of them writes, before the first one
writes anything: a run that another would stop at its second stage is refused before its first.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

from instructlake.jobs.config import LeaseConf

log = logging.getLogger(__name__)

HOST = socket.gethostname()
LEASES = "leases"


class LeaseHeld(RuntimeError):
    """Another live run writes a resource this run needs (still so after run.lease.wait_s)."""


class LeaseLost(RuntimeError):
    """This run's lease lapsed while it ran (its driver stalled past ttl_s): another run may have written."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def run_resource(run_id: str, stage: str) -> str:
    return f"run:{run_id}/{stage}"


def _process_started(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (Linux): tells a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def dead(row: dict[str, Any]) -> bool:
    """The holder was a process on this host that is gone (or whose pid now names another process)."""
    if row.get("host") != HOST or row.get("pid") is None:
        return False
    try:
        os.kill(row["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    started = _process_started(row["pid"])
    return row.get("pid_started") is not None and started is not None and started != row["pid_started"]


def live(row: dict[str, Any], now: dt.datetime) -> bool:
    return row["expires_at"] > now and not dead(row)


def describe(row: dict[str, Any]) -> str:
    return (
        f"{row['resource']} is written by run {row['run_id']} stage {row['stage']} "
        f"(host {row['host']}, pid {row['pid']}, since {row['acquired_at']:%Y-%m-%d %H:%M:%S} UTC, "
        f"lease renewed {row['heartbeat_at']:%H:%M:%S}, expires {row['expires_at']:%H:%M:%S} UTC)"
    )


class Lease:
    """The leases of one stage run, or of a pipeline's stages (`stages` in order; `stage`, the one running
    now, is what the rows and messages name): `with Lease(...):` acquires them (waiting up to wait_s),
    renews them from a daemon thread, and releases them on exit."""

    def __init__(self, store, conf: LeaseConf, run_id: str, stages: str | Sequence[str], resources: list[str]):
        self.stages = [stages] if isinstance(stages, str) else list(stages)
        self.store, self.conf, self.run_id, self.stage = store, conf, run_id, self.stages[0]
        self.resources = sorted({*resources, *(run_resource(run_id, s) for s in self.stages)})
        self.lease_id = secrets.token_hex(8)
        self.lost: str | None = None
        self.taken_over: set[str] = set()  # resources whose lease this run took from another holder
        self._acquired_at: dt.datetime | None = None
        self._renewed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rows(self, now: dt.datetime) -> list[dict[str, Any]]:
        pid = os.getpid()
        return [
            {
                "resource": r,
                "lease_id": self.lease_id,
                "run_id": self.run_id,
                "stage": self.stage,
                "host": HOST,
                "pid": pid,
                "pid_started": _process_started(pid),
                "acquired_at": self._acquired_at or now,
                "heartbeat_at": now,
                "expires_at": now + dt.timedelta(seconds=self.conf.ttl_s),
                "created_at": now,
            }
            for r in self.resources
        ]

    def _held(self) -> dict[str, dict[str, Any]]:
        wanted = set(self.resources)
        return {r["resource"]: r for r in self.store.rows(LEASES) if r["resource"] in wanted}

    def _try(self) -> list[dict[str, Any]]:
        """One attempt; returns the leases of others that block this run (empty: all are ours)."""
        blockers = self._take([])
        gone = sorted(b["lease_id"] for b in blockers if dead(b))
        if gone:  # a holder on this host that is gone: take its leases over without waiting for the TTL
            blockers = self._take(gone)
        if blockers:
            self._release_rows()
        return blockers

    def _take(self, gone: list[str]) -> list[dict[str, Any]]:
        now = utcnow()
        when = "t.lease_id = s.lease_id OR t.expires_at < s.heartbeat_at"
        if gone:  # lease ids are hex tokens: safe to inline
            when += f" OR t.lease_id IN ({', '.join(repr(g) for g in gone)})"
        self._acquired_at = now
        # taken_from: the lease id a takeover replaced, set in the same MERGE (an insert leaves it null),
        # so the stage knows which tables' fences to move on (TableStore.take_fences).
        self.store.upsert_where(self._rows(now), LEASES, when, keep={"taken_from": "t.lease_id"})
        held = self._held().values()
        self.taken_over |= {r["resource"] for r in held if r["lease_id"] == self.lease_id and r.get("taken_from") not in (None, self.lease_id)}
        return [r for r in held if r["lease_id"] != self.lease_id]

    def acquire(self) -> None:
        deadline = time.monotonic() + self.conf.wait_s
        while True:
            blockers = self._try()
            if not blockers:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                waited = f" (waited {self.conf.wait_s:g} s; raise run.lease.wait_s to wait longer)" if self.conf.wait_s else " (set run.lease.wait_s to wait for it)"
                raise LeaseHeld(f"{self._what()} cannot start: " + "; ".join(describe(b) for b in blockers) + waited)
            log.info("%s waits: %s", self._what(), describe(blockers[0]))
            time.sleep(min(left, 5.0) * (0.5 + random.random() / 2))
        self._renewed = time.monotonic()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.stage}", daemon=True)
        self._thread.start()
        log.info("%s leased %s", self._what(), ", ".join(self.resources))

    def _what(self) -> str:
        return f"stage {self.stage}" if len(self.stages) == 1 else f"pipeline {', '.join(self.stages)}"

    def renew(self) -> None:
        if time.monotonic() - self._renewed > self.conf.ttl_s:
            self.lost = f"not renewed for over {self.conf.ttl_s:g} s (run.lease.ttl_s): another run may have taken it"
            return
        self.store.upsert_where(self._rows(utcnow()), LEASES, "t.lease_id = s.lease_id")
        taken = [r for r in self._held().values() if r["lease_id"] != self.lease_id]
        if taken:
            self.lost = "taken over: " + "; ".join(describe(r) for r in taken)
        else:
            self._renewed = time.monotonic()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.conf.heartbeat_s) and not self.lost:
            try:
                self.renew()
            except Exception as e:  # storage hiccup: the next beat retries; ttl_s bounds how long that may last
                log.warning("stage %s: lease renewal failed: %s", self.stage, e)
            if self.lost:
                log.error("stage %s: lease lost: %s", self.stage, self.lost)

    def check(self) -> None:
        """Raise when the lease lapsed: writing on could double rows another run wrote meanwhile. Also when
        the heartbeat has not renewed it within ttl_s (a stalled driver whose beat has not run yet)."""
        if not self.lost and self._thread is not None and time.monotonic() - self._renewed > self.conf.ttl_s:
            self.lost = f"not renewed for over {self.conf.ttl_s:g} s (run.lease.ttl_s): another run may have taken it"
        if self.lost:
            raise LeaseLost(f"stage {self.stage} (run {self.run_id}) lost its lease: {self.lost}")

    def _release_rows(self) -> None:
        self.store.delete_where(self._rows(utcnow()), LEASES, "t.lease_id = s.lease_id")

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._release_rows()

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def mark_abandoned(store, ttl_s: float, exclude: tuple[str, str]) -> list[dict[str, Any]]:
    """Mark runs recorded `running` whose driver is gone (their run lease lapsed, or never existed) as
    `abandoned`. Returns the runs marked."""
    now = utcnow()
    leases = {r["resource"]: r for r in store.rows(LEASES)}
    marked = []
    for run in store.rows("runs", {"status": "running"}):
        if (run["run_id"], run["stage"]) == exclude:
            continue
        lease = leases.get(run_resource(run["run_id"], run["stage"]))
        if lease and live(lease, now):
            continue
        if lease:
            why = f"its driver (host {lease['host']}, pid {lease['pid']}) stopped renewing its lease at {lease['heartbeat_at']:%Y-%m-%d %H:%M:%S} UTC"
        else:
            why = "it holds no lease (killed, or written by a version without leases)"
        marked.append({**run, "status": "abandoned", "finished_at": lease["heartbeat_at"] if lease else None, "error": f"abandoned: {why}"})
    if marked:
        # Only while still `running`: a run that finished meanwhile keeps its own record.
        store.upsert_where(marked, "runs", "t.status = 'running'")
        log.warning("marked %d run(s) abandoned: %s", len(marked), ", ".join(f"{m['run_id']}/{m['stage']}" for m in marked))
    # Stale leases stay: the next run that needs one takes it over (and with it the table's fence, so no
    # late commit of a holder that only looked dead lands); deleting them would make them look released.
    return marked
