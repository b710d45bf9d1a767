"""Database outages: workers and the campaign runner wait them out; nothing is failed or lost.

Each test starts a database of its own (the tests kill it with SIGKILL and start it again on
the same port and data directory), with a 1 s server-selection timeout so that an outage of a
few seconds already outlasts it, as a 30 s+ outage outlasts pymongo's default.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pymongo
import pytest

from cspflow.settings import CspflowSettings, get_settings

SELECTION_TIMEOUT_MS = 1000
OUTAGE_S = 8.0


class OwnServer:
    """An embedded server this test may kill and restart (same port, same data directory)."""

    def __init__(self, data_dir: Path) -> None:
        from cspflow.db import start_server

        self.data_dir = data_dir
        self.info = start_server(CspflowSettings(data_dir=data_dir, db_uri=None, db_port=0),
                                 bound_to_caller=True)  # fmt: skip
        self.uri = self.info.uri
        self.port = int(self.uri.split(":")[2].split("/")[0])

    def kill9(self) -> None:
        os.kill(self.info.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{self.info.pid}").exists():
            time.sleep(0.05)

    def restart(self) -> None:
        from cspflow.db import start_server

        self.info = start_server(CspflowSettings(data_dir=self.data_dir, db_uri=None,
                                                 db_port=self.port), bound_to_caller=True)  # fmt: skip
        assert self.info.uri == self.uri

    def stop(self) -> None:
        from cspflow.db import stop_server

        stop_server(CspflowSettings(data_dir=self.data_dir, db_uri=None))


@pytest.fixture
def own_db(tmp_path, monkeypatch):
    """Settings on a database of this test's own, with a short server-selection timeout."""
    server = OwnServer(tmp_path / "data")
    for key in list(os.environ):
        if key.startswith("CSPFLOW_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CSPFLOW_CONFIG_FILE", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("CSPFLOW_DATA_DIR", str(server.data_dir))
    monkeypatch.setenv("CSPFLOW_DB_URI", server.uri)
    monkeypatch.setenv("CSPFLOW_DB_NAME", "outage")
    monkeypatch.setenv("CSPFLOW_WORK_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CSPFLOW_DB_SERVER_SELECTION_TIMEOUT_MS", str(SELECTION_TIMEOUT_MS))
    monkeypatch.setenv("CSPFLOW_DB_RETRY_CAP_S", "2")
    get_settings.cache_clear()
    yield types.SimpleNamespace(server=server, settings=get_settings())
    get_settings.cache_clear()
    server.stop()


def snapshot(uri: str) -> dict[str, set]:
    """What is stored now: completed fireworks, job outputs, side effects (for data-lost counts)."""
    db = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000).outage
    return {
        "completed": {f["fw_id"] for f in db.fireworks.find({"state": "COMPLETED"}, {"fw_id": 1})},
        "outputs": {o["uuid"] for o in db.outputs.find({}, {"uuid": 1})},
        "effects": {(e["tag"], e["runs"]) for e in db.test_effects.find({}, {"tag": 1, "runs": 1})},
    }


def lost_between(before: dict[str, set], after: dict[str, set]) -> int:
    """Documents present before the kill and missing (or changed) afterwards."""
    return sum(len(before[k] - after[k]) for k in ("completed", "outputs")) + len(
        {t for t, _ in before["effects"]} - {t for t, _ in after["effects"]})  # fmt: skip


def run_counts(uri: str) -> dict:
    db = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000).outage
    fws = list(
        db.fireworks.find({}, {"fw_id": 1, "state": 1, "launches": 1, "archived_launches": 1})
    )
    effects = {e["tag"]: e["runs"] for e in db.test_effects.find({})}
    return {
        "fireworks": len(fws),
        "completed": sum(f["state"] == "COMPLETED" for f in fws),
        "fizzled": sum(f["state"] == "FIZZLED" for f in fws),
        "launches": db.launches.count_documents({}),
        "reruns": sum(len(f.get("archived_launches", [])) for f in fws),
        "one_launch_each": all(len(f.get("launches", [])) == 1 for f in fws),
        "executions": sum(effects.values()),
        "duplicates": sum(n - 1 for n in effects.values() if n > 1),
        "jobs_with_effect": len(effects),
    }


def stuck_report(uri: str) -> str:
    """Where a flow that did not finish stands: firework states, workflow lock, open launches."""
    db = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000).outage
    fws = sorted((f["fw_id"], f["state"]) for f in db.fireworks.find({}, {"fw_id": 1, "state": 1}))
    wfs = [
        (w.get("state"), w.get("locked")) for w in db.workflows.find({}, {"state": 1, "locked": 1})
    ]
    open_launches = [(ln["launch_id"], ln["fw_id"], ln["state"], ln.get("time_start"))
                     for ln in db.launches.find({"state": {"$ne": "COMPLETED"}})]  # fmt: skip
    return f"fireworks {fws}; workflows (state, locked) {wfs}; open launches {open_launches}"


def fizzled_errors(uri: str) -> str:
    """The stored error of every FIZZLED launch (what `lpad get_fws -d all` would show)."""
    db = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000).outage
    errors = []
    for ln in db.launches.find({"state": "FIZZLED"}):
        stored = (ln.get("action") or {}).get("stored_data") or {}
        errors.append(f"fw {ln['fw_id']}: {str(stored.get('_exception', stored))[-2500:]}")
    return "\n".join(errors)


def test_retry_logs_one_line_per_attempt_and_never_the_password(capsys):
    from pymongo.errors import DuplicateKeyError, ServerSelectionTimeoutError

    from cspflow.errors import DatabaseUnreachable
    from cspflow.store.outage import Backoff, Retry

    uri = "mongodb://alice:s3cret-pw@127.0.0.1:1/?authSource=admin"
    retry = Retry(uri=uri, backoff=Backoff(first_s=0.01, factor=2, cap_s=0.02, max_wait_s=5))
    failures = iter([ServerSelectionTimeoutError("down"), ServerSelectionTimeoutError("down")])

    def flaky() -> str:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return "ok"

    assert retry.call(flaky, what="checkout") == "ok"
    err = capsys.readouterr().err.splitlines()
    print("\nlog while the database was down:\n" + "\n".join(err))
    assert len(err) == 3
    assert all("unreachable (ServerSelectionTimeoutError) during checkout" in ln for ln in err[:2])
    assert "attempt 1, retrying in 0 s" in err[0] and "attempt 2" in err[1]
    assert "is back after 2 attempt(s)" in err[2]
    assert all("s3cret-pw" not in ln and "alice:***@" in ln for ln in err)
    # delays grow and are capped
    assert [Backoff(first_s=1, cap_s=60).delay(i) for i in (1, 2, 3, 7, 20)] == [1, 2, 4, 60, 60]

    # a request the database refuses is not an outage: it fails at once
    calls = []

    def duplicate() -> None:
        calls.append(1)
        raise DuplicateKeyError("E11000")

    with pytest.raises(DuplicateKeyError):
        retry.call(duplicate)
    assert calls == [1]

    # an outage longer than the limit ends in one line, without the password
    never = Retry(uri=uri, backoff=Backoff(first_s=0.01, cap_s=0.01, max_wait_s=0.05))
    with pytest.raises(DatabaseUnreachable) as info:
        never.call(lambda: (_ for _ in ()).throw(ServerSelectionTimeoutError("down")))
    assert "\n" not in str(info.value) and "s3cret-pw" not in str(info.value)
    assert "cspflow worker reconcile" in str(info.value)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("ride_out", [False, True], ids=["plain-rapidfire", "cspflow-worker"])
def test_worker_rides_out_a_database_restart(own_db, ride_out):
    """kill -9 of the database during a job, restarted 8 s later (8x the selection timeout).

    ``plain-rapidfire`` (db_outage_max_wait_s=0) is FireWorks' own behaviour: the worker dies
    and its firework is left RUNNING or FIZZLED. The cspflow worker waits and loses nothing.
    """
    from cspflow.scheduler.launchpad import get_launchpad, submit_flow
    from cspflow.scheduler.workers import worker_command
    from cspflow.testing.jobs import work_flow

    n = 3
    server, settings = own_db.server, own_db.settings
    submit_flow(work_flow(n, seconds=3.0, name="outage"), settings)
    lp = get_launchpad(settings)
    env = dict(os.environ, CSPFLOW_DB_OUTAGE_MAX_WAIT_S="600" if ride_out else "0")
    t0 = time.monotonic()
    worker = subprocess.Popen(
        worker_command("cpu", sleep=1, until_empty=True),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: lp.launches.count_documents({"state": "RUNNING"}) == 1, 120, "a running job")
    time.sleep(1.0)  # mid-job
    before = snapshot(server.uri)
    server.kill9()
    killed_at = time.monotonic() - t0
    time.sleep(OUTAGE_S)
    server.restart()
    out, err = worker.communicate(timeout=300)
    elapsed = time.monotonic() - t0
    after = snapshot(server.uri)
    c = run_counts(server.uri)
    retry_lines = [ln for ln in err.splitlines() if "unreachable" in ln and "retrying in" in ln]
    reruns_in_place = sum("running it again" in ln for ln in err.splitlines())
    print(f"\n[{'cspflow worker' if ride_out else 'plain rapidfire'}] database killed at "
          f"{killed_at:.1f} s, down {OUTAGE_S:.0f} s (selection timeout {SELECTION_TIMEOUT_MS} ms); "
          f"worker exit {worker.returncode} after {elapsed:.0f} s; {c['fireworks']} jobs: "
          f"{c['completed']} completed, {c['fizzled']} fizzled, {c['launches']} launches, "
          f"{c['reruns']} reruns, {c['executions']} executions, {c['duplicates']} duplicates, "
          f"{lost_between(before, after)} documents lost; {len(retry_lines)} retry log lines, "
          f"{reruns_in_place} task reruns in place")  # fmt: skip
    assert lost_between(before, after) == 0
    if not ride_out:
        # what the fix is for: FireWorks alone does not survive this outage
        assert worker.returncode != 0 or c["completed"] < n or c["fizzled"] > 0
        return
    assert worker.returncode == 0, err[-3000:]
    assert f"cpu worker: {n} launch(es)" in out
    assert c["completed"] == n and c["fizzled"] == 0
    assert c["launches"] == n and c["one_launch_each"] and c["reruns"] == 0
    assert c["jobs_with_effect"] == n and c["duplicates"] == 0
    assert retry_lines, err[-3000:]
    assert all(ln.count("cspflow:") == 1 for ln in retry_lines)  # one line per attempt
    assert "Traceback" not in err


def test_campaign_runner_and_workers_survive_kill9_of_the_database(own_db):
    """The local campaign runner with its workers, the database SIGKILLed mid-flow and started
    again: the flow completes, every job once, nothing written before the kill is lost."""
    from cspflow.scheduler.launchpad import submit_flow
    from cspflow.scheduler.local import run_campaign_locally
    from cspflow.testing.jobs import work_flow

    n = 8
    server, settings = own_db.server, own_db.settings
    name = "outage-campaign"
    ids = submit_flow(work_flow(n, seconds=1.5, name="camp"), settings, metadata={"campaign": name})
    result: dict = {}

    def runner() -> None:
        try:
            result["out"] = run_campaign_locally(types.SimpleNamespace(name=name), settings,
                                                 sorted(ids.values()), created=True, timeout=400,
                                                 poll_s=0.5, reconcile_every_s=5)  # fmt: skip
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    t0 = time.monotonic()
    thread = threading.Thread(target=runner)
    thread.start()
    db = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=5000).outage
    wait_for(lambda: db.fireworks.count_documents({"state": "COMPLETED"}) >= 2, 240,
             "two completed jobs")  # fmt: skip
    before = snapshot(server.uri)
    server.kill9()
    killed_at = time.monotonic() - t0
    time.sleep(OUTAGE_S)
    server.restart()
    thread.join(timeout=420)
    elapsed = time.monotonic() - t0
    after = snapshot(server.uri)
    c = run_counts(server.uri)
    log = "".join(p.read_text() for p in Path(settings.runs_dir).glob("worker-*.log"))
    retry_lines = sum("retrying in" in ln for ln in log.splitlines())
    print(f"\ncampaign runner: database killed at {killed_at:.1f} s with {len(before['completed'])} of "
          f"{n} jobs done, down {OUTAGE_S:.0f} s; finished after {elapsed:.0f} s "
          f"({result.get('out', result.get('error'))!s:.80}); {c['completed']} completed, "
          f"{c['fizzled']} fizzled, {c['launches']} launches, {c['reruns']} reruns, "
          f"{c['executions']} executions, {c['duplicates']} duplicates, "
          f"{lost_between(before, after)} documents lost; {retry_lines} worker retry log lines")  # fmt: skip
    assert "error" not in result, (
        f"{result.get('error')}\n{stuck_report(server.uri)}\n{log[-4000:]}"
    )
    assert result["out"]["state"] == "COMPLETED"
    assert lost_between(before, after) == 0
    assert before["completed"] <= after["completed"]
    assert c["completed"] == n and c["fizzled"] == 0
    assert c["one_launch_each"] and c["launches"] == n and c["reruns"] == 0
    assert c["jobs_with_effect"] == n and c["duplicates"] == 0


class _LostReply:
    """A collection whose next ``find_one_and_update`` is applied but answers AutoReconnect,
    as when the server dies between applying a write and sending its reply."""

    def __init__(self, collection, fail: int = 1) -> None:
        self.collection, self.fail = collection, fail

    def __getattr__(self, name):
        return getattr(self.collection, name)

    def find_one_and_update(self, *args, **kwargs):
        return self._lost(self.collection.find_one_and_update(*args, **kwargs))

    def insert_many(self, *args, **kwargs):
        return self._lost(self.collection.insert_many(*args, **kwargs))

    def _lost(self, answer):
        from pymongo.errors import AutoReconnect

        if self.fail:
            self.fail -= 1
            raise AutoReconnect("connection closed after the write was applied")
        return answer


def test_a_write_applied_before_its_answer_was_lost_is_not_applied_again(db, settings):
    """A checkout or workflow lock whose reply the outage swallowed: the retry returns the
    document the lost try changed, and does not take a second one or wait on its own lock."""
    from fireworks.core.launchpad import WFLock

    from cspflow.scheduler.launchpad import flow_to_workflow, get_launchpad
    from cspflow.store.outage import Backoff, Retry, RetryingCollection
    from cspflow.testing.jobs import work_flow

    retry = Retry(uri=settings.db_uri.get_secret_value(), backoff=Backoff(first_s=0.01))
    fws = RetryingCollection(_LostReply(db.fws_test), retry)
    db.fws_test.insert_many([{"fw_id": i, "state": "READY"} for i in (1, 2)])
    got = fws.find_one_and_update({"state": "READY"}, {"$set": {"state": "RESERVED"}},
                                  sort=[("fw_id", 1)])  # fmt: skip
    states = {d["fw_id"]: d["state"] for d in db.fws_test.find()}
    assert got["fw_id"] == 1 and states == {1: "RESERVED", 2: "READY"}, states

    # FireWorks inserts new fireworks from a generator: a retry must not find it spent
    fws = RetryingCollection(_LostReply(db.fws_test), retry)
    result = fws.insert_many({"fw_id": i, "state": "WAITING"} for i in (3, 4))
    assert len(result.inserted_ids) == 2
    assert sorted(d["fw_id"] for d in db.fws_test.find()) == [1, 2, 3, 4]

    lp = get_launchpad(settings)
    fw_id = next(iter(lp.add_wf(flow_to_workflow(work_flow(1, name="lock"))).values()))
    lp.workflows = RetryingCollection(_LostReply(lp.workflows), retry)
    with WFLock(lp, fw_id, expire_secs=5):  # without the marker: LockedWorkflowError after 5 s
        assert db.workflows.find_one({"nodes": fw_id})["locked"]
    assert "locked" not in db.workflows.find_one({"nodes": fw_id})


def test_a_task_broken_by_an_outage_runs_again_in_its_launch(settings, capsys):
    from cspflow.errors import DatabaseUnreachable
    from cspflow.scheduler.launchpad import _RerunOnOutage
    from cspflow.store.outage import Backoff, Retry

    class Task:
        fw_name = "{{cspflow.testing.Fake}}"

        def __init__(self, fail_with):
            self.fail_with, self.calls = fail_with, 0

        def run_task(self, fw_spec):
            self.calls += 1
            if self.calls == 1:
                raise self.fail_with
            return {"ran": self.calls}

    retry = Retry(uri=settings.db_uri.get_secret_value(), backoff=Backoff(first_s=0.01))
    task = Task(DatabaseUnreachable("cannot reach the database"))
    wrapped = _RerunOnOutage(task, retry)
    wrapped.fw_id = 7  # FireWorks sets attributes on tasks: they reach the real task
    assert wrapped.run_task({}) == {"ran": 2} and task.calls == 2 and task.fw_id == 7
    err = capsys.readouterr().err
    print(f"\n{err.strip()}")
    assert "was interrupted by the database outage (DatabaseUnreachable); running it again" in err

    broken = Task(ValueError("a real bug"))  # not an outage: fails at once, FireWorks fizzles it
    with pytest.raises(ValueError):
        _RerunOnOutage(broken, retry).run_task({})
    assert broken.calls == 1


@pytest.mark.slow
def test_real_campaign_resumes_after_kill9_of_the_database(own_db, tmp_path):
    """`campaign run` of a real (MLIP-only, CHGNet) campaign with the database SIGKILLed while
    its jobs run and started again: the campaign completes, and every candidate, relaxation and
    firework stored before the kill is there unchanged afterwards."""
    import yaml

    spec = {
        "name": "si-outage", "compositions": ["Si"], "max_atoms": 2,
        "generate": {"per_iteration": 4, "sources": {"prototype": 1.0}, "seed": 2},
        "prerelax": {"model": "chgnet", "max_steps": 100, "batch_size": 1},
        "select": {"top_k": 2}, "dft": {"engine": "none"}, "stop": {"max_iterations": 2},
    }  # fmt: skip
    path = tmp_path / "si.yaml"
    path.write_text(yaml.safe_dump(spec))
    server = own_db.server
    t0 = time.monotonic()
    runner = subprocess.Popen([sys.executable, "-m", "cspflow.cli.main", "campaign", "run", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    db = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=5000).outage
    wait_for(lambda: db.candidates.count_documents({"status": "prerelaxed"}) >= 1
             or runner.poll() is not None, 600, "a first relaxed candidate")  # fmt: skip
    assert runner.poll() is None, runner.stdout.read()[-3000:]

    def stored() -> dict:
        return {
            "candidates": {d["candidate_id"]: (d.get("relaxed") or {}).get("mlip")
                           for d in db.candidates.find({}, {"candidate_id": 1, "relaxed.mlip": 1})},
            "completed": {f["fw_id"] for f in db.fireworks.find({"state": "COMPLETED"}, {"fw_id": 1})},
        }  # fmt: skip

    before = stored()
    server.kill9()
    killed_at = time.monotonic() - t0
    time.sleep(OUTAGE_S)
    server.restart()
    out, _ = runner.communicate(timeout=900)
    after = stored()
    lost = sum(1 for cid, mlip in before["candidates"].items()
               if cid not in after["candidates"] or (mlip and after["candidates"][cid] != mlip))  # fmt: skip
    lost += len(before["completed"] - after["completed"])
    fws = list(db.fireworks.find({}, {"state": 1, "launches": 1, "archived_launches": 1}))
    reruns = sum(len(f.get("archived_launches", [])) for f in fws)
    camp = db.campaigns.find_one({"name": "si-outage"})
    per_form = db.candidates.aggregate([{"$group": {"_id": "$fingerprint_hash", "n": {"$sum": 1}}}])
    duplicates = sum(r["n"] - 1 for r in per_form)
    print(f"\nreal campaign: database killed at {killed_at:.0f} s with "
          f"{len(before['candidates'])} candidates and {len(before['completed'])} completed "
          f"fireworks stored, down {OUTAGE_S:.0f} s; finished after {time.monotonic() - t0:.0f} s "
          f"in state {camp['state']}; {sum(f['state'] == 'COMPLETED' for f in fws)}/{len(fws)} "
          f"fireworks completed, {db.launches.count_documents({})} launches, {reruns} reruns, "
          f"{duplicates} duplicate candidates, "
          f"{lost} documents lost")  # fmt: skip
    assert runner.returncode == 0, (
        f"{out[-3000:]}\n{stuck_report(server.uri)}\n{fizzled_errors(server.uri)}"
    )
    assert camp["state"] == "completed" and [it["iteration"] for it in camp["iterations"]] == [0, 1]
    assert lost == 0 and duplicates == 0
    assert all(f["state"] == "COMPLETED" for f in fws)
    assert db.candidates.count_documents({"iteration": 1}) >= 1
