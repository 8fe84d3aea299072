"""Decisions a person takes in the Airflow UI (Human-in-the-loop tasks), under the real scheduler, executor,
dag-processor, triggerer and api-server — one stack and one upgraded cluster for the module, the cases in order:

1. `pg_major_upgrade_cleanup` without `confirm_delete`: `approve_delete` waits; answered *Reject* in the browser
   (headless Debian chromium logs into the UI and clicks the option on the task's Required Actions view; the REST
   API confirms the response) → nothing deleted, the journal names the user.
2. again, with `decision_timeout_s` = 10 and no answer: the scheduler applies the safe default (Reject) → kept.
3. `pg_major_upgrade_rollback` by hand after clients wrote to the new cluster: `choose_path` waits; answered
   *Keep the new version serving* → the run ends failed with nothing changed, the new version serves on with every
   write, the report names the user.
4. the cleanup once more, answered *Approve* → the old data directory is deleted, the upgrade run's journal says
   who approved.

*Discard the writes and roll back* takes the rollback's own path once consented (tests/unit/test_hitl.py checks
the consent; tests/integration/test_rollback_after_success.py the restore with the loss accepted by the conf).
Budget: about 3 minutes on 2 cores, most of it the upgrade."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from pgupgrade import decisions
from pgupgrade.cluster import Cluster
from pgupgrade.sql import connect, scalar
from pgupgrade.state import RunState

from airflow_stack import AirflowStack, chrome, ui_login
from pgharness import APP_DB, connection_env, installation, served_version, track_new

pytestmark = pytest.mark.scheduler
UPGRADE, CLEANUP, ROLLBACK = "pg15_to_pg16_upgrade", "pg_major_upgrade_cleanup", "pg_major_upgrade_rollback"
UPGRADE_RUN = "hitl-upgrade"
TAILS = ("release_lock", "finish", "report")  # fail (or run) because another task failed
USER = "admin"  # the stack's REST and UI user: the one who answers


@dataclass
class Hitl:
    stack: AirflowStack
    state_dir: Path
    old: Cluster

    def base_conf(self) -> dict[str, Any]:
        return {"postgres_conn_id": self.old.name, "upgrade_dag_id": UPGRADE, "upgrade_run_id": UPGRADE_RUN}

    def journal(self, dag_id: str, run_id: str) -> RunState:
        return RunState.for_run(dag_id, run_id, self.state_dir)


@pytest.fixture(scope="module")
def hitl(pool: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hitl]:
    meta = pool.new("17", "hitl_meta", seed=False)
    old = pool.new("15.18", "hitl_old")
    state_dir = tmp_path_factory.mktemp("hitl") / "state"
    env = dict([connection_env(old)]) | {
        "PGUPGRADE_STATE_DIR": str(state_dir),
        # the scheduler's sweep of timed-out questions (default every 15 s)
        "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
    }
    stack: AirflowStack | None = None
    try:
        stack = AirflowStack(meta, env).start()
        stack.wait_for_dags([UPGRADE, CLEANUP, ROLLBACK])
        for dag_id in (UPGRADE, CLEANUP, ROLLBACK):
            stack.unpause(dag_id)
        home = Path(old.datadir).parent
        conf = {
            "postgres_conn_id": old.name,
            "backup_dir": str(home / "backup"),
            "new_datadir": str(home / "data16"),
            "new_bindir": installation("16").bindir,
        }
        track_new(pool, old, conf)
        started = time.monotonic()
        stack.trigger(UPGRADE, conf, UPGRADE_RUN)
        state = wait_run(stack, UPGRADE, UPGRADE_RUN, timeout=400)
        states = stack.task_states(UPGRADE, UPGRADE_RUN)
        errors = [e.get("error") for e in RunState.for_run(UPGRADE, UPGRADE_RUN, state_dir).events() if e.get("error")]
        assert state == "success", (states, errors)
        assert states["plan.approve_blockers"] == "success", states  # nothing to decide: it did not wait
        print(f"upgrade 15 → 16 under the scheduler: {time.monotonic() - started:.0f}s")
        yield Hitl(stack, state_dir, old)
    finally:
        if stack is not None:
            stack.stop()
            shutil.rmtree(stack.home, ignore_errors=True)


def _tolerant(fn: Any, *args: Any) -> Any:
    """One REST read, None when the api-server does not answer in time (2 cores shared: it happens)."""
    try:
        return fn(*args)
    except requests.RequestException as exc:
        print(f"REST read failed, retrying: {exc}")
        return None


def wait_run(stack: AirflowStack, dag_id: str, run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _tolerant(stack.run_state, dag_id, run_id)
        if state in ("success", "failed"):
            return str(state)
        time.sleep(1)
    raise TimeoutError(f"{dag_id}/{run_id} did not finish in {timeout}s; logs in {stack.home}")


def _log(stack: AirflowStack, dag_id: str, run_id: str, task_id: str) -> str:
    """The task's log (its last try) as the REST API gives it: what a failure message needs."""
    tries = [t for t in stack.task_instances(dag_id, run_id) if t["task_id"] == task_id]
    n = tries[0]["try_number"] if tries else 1
    got = stack.api(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{n}", params={"full_content": True}
    )
    content = got.get("content") or []
    errors = [e for e in content if isinstance(e, dict) and e.get("level") in ("error", "critical", "warning")]
    return json.dumps(errors or content, default=str)[-6000:]


def _why(stack: AirflowStack, dag_id: str, run_id: str) -> str:
    """Task states, and the logs of the failed tasks."""
    states = stack.task_states(dag_id, run_id)
    logs = {t: _log(stack, dag_id, run_id, t) for t, st in states.items() if st == "failed" and t not in TAILS}
    return json.dumps({"states": states, "logs": logs}, indent=1)[-12000:]


def _hitl_path(dag_id: str, run_id: str, task_id: str) -> str:
    return f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"


def _exit_seen(h: Hitl, dag_id: str, run_id: str, task_id: str) -> bool:
    """Whether the scheduler has handled the executor's report that the parked task's process ended."""
    line = f"TaskInstance Finished: dag_id={dag_id}, task_id={task_id}, run_id={run_id},"
    return line in (h.stack.home / "scheduler.log").read_text(errors="replace")


def wait_question(h: Hitl, dag_id: str, run_id: str, task_id: str, timeout: float = 180) -> dict[str, Any]:
    """The question once the task waits for it (state awaiting_input) and the scheduler has handled the parked
    process's exit, as the REST API shows it. An answer that lands before that handling races Airflow 3.3: the
    resumed task instance is queued or running when the stale "success" of the deferral exit arrives, and the
    scheduler fails it as "killed externally" (its guard covers a resumed instance only while it is scheduled).
    A person never answers that fast; a test must wait for it, and no fixed pause is long enough under load."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = _tolerant(h.stack.task_states, dag_id, run_id) or {}
        if states.get(task_id) == "awaiting_input" and _exit_seen(h, dag_id, run_id, task_id):
            return dict(h.stack.api("GET", _hitl_path(dag_id, run_id, task_id)))
        assert _tolerant(h.stack.run_state, dag_id, run_id) not in ("success", "failed"), states
        time.sleep(0.5)
    raise AssertionError(f"{dag_id}/{run_id}: {task_id} never waited for an answer (or its exit was not handled)")


def answer(h: Hitl, dag_id: str, run_id: str, task_id: str, option: str) -> dict[str, Any]:
    q = wait_question(h, dag_id, run_id, task_id)
    assert option in q["options"], q
    resp = h.stack.api("PATCH", _hitl_path(dag_id, run_id, task_id), json={"chosen_options": [option]})
    assert resp["responded_by"]["name"] == USER, resp
    return q


def answer_in_the_browser(
    h: Hitl, dag_id: str, run_id: str, task_id: str, option: str, artifacts: Path
) -> dict[str, Any]:
    """As a person: logs into the UI, opens the task instance's Required Actions view, clicks the option (an
    Approve/Reject question shows one button per option, a click responds), waits for the UI to confirm; then
    checks over REST that the response was recorded, from `admin`, with that option. Screenshot and page source
    into `artifacts` on failure."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    q = wait_question(h, dag_id, run_id, task_id)
    assert option in q["options"] and not q.get("response_received"), q
    url = f"{h.stack.base}/dags/{quote(dag_id)}/runs/{quote(run_id)}/tasks/{quote(task_id)}/required_actions"
    button_xpath = f"//button[normalize-space(.)='{option}']"  # the option's label is the button's text
    started, driver = time.monotonic(), chrome()
    try:
        wait = WebDriverWait(driver, 60)
        ui_login(driver, h.stack.base)
        driver.get(url)
        # enabled once the UI has the question and sees the task awaiting input
        wait.until(lambda d: [b for b in d.find_elements(By.XPATH, button_xpath) if b.is_enabled()])
        [button] = driver.find_elements(By.XPATH, button_xpath)
        text = str(driver.find_element(By.TAG_NAME, "body").text)
        assert q["subject"].splitlines()[0].strip() in text, f"the question is not on the page:\n{text}"
        print(f"{url}: option buttons {[b.text for b in driver.find_elements(By.CSS_SELECTOR, 'footer button')]}")
        failed = "Response failed"  # the UI's error toast (hitl.json)
        clicks = 0
        # The proof is the response recorded (REST), not the success toast: a CI run once waited 60 s for that
        # toast in vain (a toast lasts a few seconds; a click landing while the form re-renders on a refetch is
        # lost: which of the two was not recorded). A person whose click did nothing clicks again; so does the
        # test, only while nothing was recorded and the option is still offered.
        while clicks < 3:
            [button] = [b for b in driver.find_elements(By.XPATH, button_xpath) if b.is_enabled()] or [button]
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
            button.click()
            clicks += 1
            try:
                WebDriverWait(driver, 30, poll_frequency=1).until(
                    lambda d: (
                        failed in str(d.find_element(By.TAG_NAME, "body").text)
                        or (_tolerant(h.stack.api, "GET", _hitl_path(dag_id, run_id, task_id)) or {}).get(
                            "response_received"
                        )
                    )
                )
                break
            except TimeoutException:
                assert [b for b in driver.find_elements(By.XPATH, button_xpath) if b.is_enabled()], (
                    "nothing recorded 30 s after the click, and the option is no longer offered"
                )
        assert failed not in str(driver.find_element(By.TAG_NAME, "body").text), "the UI says: Response failed"
        print(f"{option!r}: {clicks} click(s)")
    except Exception:
        shot, source = artifacts / f"{run_id}-{task_id}.png", artifacts / f"{run_id}-{task_id}.html"
        driver.save_screenshot(str(shot))
        source.write_text(driver.page_source)
        print(f"screenshot: {shot}; page source: {source}")
        raise
    finally:
        driver.quit()
    got = h.stack.api("GET", _hitl_path(dag_id, run_id, task_id))
    assert got["response_received"] and got["chosen_options"] == [option], got
    assert (got.get("responded_by_user") or {}).get("name") == USER, got
    print(f"{option!r} clicked in the browser by {USER}, recorded: {time.monotonic() - started:.0f}s")
    return q


def _orders(cluster: Cluster) -> int:
    with connect(cluster, APP_DB) as conn:
        return int(scalar(conn, "SELECT count(*) FROM orders"))


def test_cleanup_rejected_in_the_browser_keeps_the_old_cluster(hitl: Hitl, tmp_path: Path) -> None:
    run_id, started = "hitl-cleanup-reject", time.monotonic()
    artifacts = Path(os.environ.get("PGUPGRADE_TEST_ARTIFACTS") or tmp_path)  # screenshot + page source
    artifacts.mkdir(parents=True, exist_ok=True)
    hitl.stack.trigger(CLEANUP, {**hitl.base_conf(), "min_age_hours": 0}, run_id)
    q = answer_in_the_browser(hitl, CLEANUP, run_id, "approve_delete", decisions.REJECT, artifacts)
    assert hitl.old.datadir in q["subject"] and q["defaults"] == [decisions.REJECT], q
    assert wait_run(hitl.stack, CLEANUP, run_id, timeout=120) == "success", _why(hitl.stack, CLEANUP, run_id)
    states = hitl.stack.task_states(CLEANUP, run_id)
    assert states["approve_delete"] == "success" and states["delete_old_cluster"] == "skipped", states
    assert Path(hitl.old.datadir, "PG_VERSION").exists()
    [d] = decisions.taken(hitl.journal(CLEANUP, run_id), "approve_delete")
    assert (d["chosen"], d["source"], d["by"]) == (decisions.REJECT, decisions.PERSON, USER), d
    print(f"cleanup rejected by {d['by']}: {time.monotonic() - started:.0f}s")


def test_cleanup_unanswered_takes_the_safe_default_after_its_timeout(hitl: Hitl) -> None:
    run_id, started = "hitl-cleanup-timeout", time.monotonic()
    hitl.stack.trigger(CLEANUP, {**hitl.base_conf(), "min_age_hours": 0, "decision_timeout_s": 10}, run_id)
    wait_question(hitl, CLEANUP, run_id, "approve_delete")
    assert wait_run(hitl.stack, CLEANUP, run_id, timeout=120) == "success"
    # when the scheduler applied the default, from the question's own times (the test's clock saw it later)
    q = hitl.stack.api("GET", _hitl_path(CLEANUP, run_id, "approve_delete"))
    created, responded = (
        dt.datetime.fromisoformat(q[k].replace("Z", "+00:00")) for k in ("created_at", "responded_at")
    )
    waited = (responded - created).total_seconds()
    states = hitl.stack.task_states(CLEANUP, run_id)
    assert states["delete_old_cluster"] == "skipped", states
    assert Path(hitl.old.datadir, "PG_VERSION").exists()
    [d] = decisions.taken(hitl.journal(CLEANUP, run_id), "approve_delete")
    assert (d["chosen"], d["source"], d["by"]) == (decisions.REJECT, decisions.TIMEOUT, None), d
    assert waited >= 9.5, f"the default was taken {waited:.1f}s after the question: before its 10 s timeout"
    print(f"cleanup unanswered: safe default after {waited:.0f}s (total {time.monotonic() - started:.0f}s)")


def test_rollback_kept_by_a_person_loses_nothing(hitl: Hitl) -> None:
    run_id, started = "hitl-rollback-keep", time.monotonic()
    with connect(hitl.old, APP_DB) as conn, conn.cursor() as cur:  # clients write to the opened new cluster
        cur.execute("INSERT INTO orders (customer, amount) SELECT 'after-open', 1 FROM generate_series(1, 50)")
    rows = _orders(hitl.old)
    hitl.stack.trigger(ROLLBACK, hitl.base_conf(), run_id)
    q = answer(hitl, ROLLBACK, run_id, "choose_path", decisions.KEEP)
    assert "bytes of WAL" in q["body"] and q["defaults"] == [decisions.KEEP], q
    assert wait_run(hitl.stack, ROLLBACK, run_id, timeout=120) == "failed"
    states = hitl.stack.task_states(ROLLBACK, run_id)
    why = _why(hitl.stack, ROLLBACK, run_id)
    assert states["keep_new"] == "failed" and states["restore_from_backup"] == "skipped", why
    assert served_version(hitl.old) == 16 and _orders(hitl.old) == rows  # serving on, every write kept
    journal = hitl.journal(ROLLBACK, run_id)
    [d] = decisions.taken(journal, "choose_path")
    assert (d["chosen"], d["by"]) == (decisions.KEEP, USER), d
    text = journal.load("report")["text"]
    assert f"by **{USER}**" in text and decisions.KEEP in text, text
    print(f"rollback kept by {d['by']}: {time.monotonic() - started:.0f}s")


def test_cleanup_approved_through_the_rest_api_deletes_the_old_cluster(hitl: Hitl) -> None:
    run_id, started = "hitl-cleanup-approve", time.monotonic()
    hitl.stack.trigger(CLEANUP, {**hitl.base_conf(), "min_age_hours": 0}, run_id)
    answer(hitl, CLEANUP, run_id, "approve_delete", decisions.APPROVE)
    state = wait_run(hitl.stack, CLEANUP, run_id, timeout=120)
    assert state == "success", _why(hitl.stack, CLEANUP, run_id)
    assert not Path(hitl.old.datadir).exists() and served_version(hitl.old) == 16
    deleted = hitl.journal(UPGRADE, UPGRADE_RUN).first("old_cluster_deleted") or {}
    assert deleted.get("confirmed") == f"approved by {USER}", deleted
    print(f"cleanup approved by {USER}: {time.monotonic() - started:.0f}s")
