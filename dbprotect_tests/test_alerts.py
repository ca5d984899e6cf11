"""Alerts without Dagster+ (issue 13, point 6): real Dagster runs and check evaluations in a real
instance, the two sensors evaluated against it, the posts received by a local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from dbprotect.defs import load_definitions
from dbprotect.defs.alerts import CHECK_FAILURE_ALERT, RUN_FAILURE_ALERT, WEBHOOK_RESOURCE, AlertWebhookResource
from dbprotect.defs.names import RPO_CHECKS_JOB

pytestmark = pytest.mark.slow  # real runs in a Dagster instance (about a second each)

WEBHOOK_VAR = "TEST_ALERT_WEBHOOK_URL"
PASSWORD = "alert-s3cret-not-for-chat"


class _Webhook:
    """A local Slack-compatible endpoint: records every JSON body; answers ``status``."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.status = 200
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                webhook.posts.append({"content_type": self.headers.get("Content-Type"),
                                      "body": json.loads(self.rfile.read(length))})
                self.send_response(webhook.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-token-xyz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        return [post["body"]["text"] for post in self.posts]


@pytest.fixture
def webhook() -> Iterator[_Webhook]:
    hook = _Webhook()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def _with_alerts(config: Path) -> None:
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    doc["alerts"] = {"webhook_url_env": WEBHOOK_VAR}
    config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


@pytest.fixture
def alerting(write_config, pg, webhook: _Webhook, monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    """A production deployment whose database does not exist (its backups fail), alerts configured."""
    _with_alerts(write_config(pg.dsn("no_such_database", password=PASSWORD), database="ghost",
                              deployment="production"))
    monkeypatch.setenv(WEBHOOK_VAR, webhook.url)
    return load_definitions()


def _tick(defs: dg.Definitions, name: str, instance: dg.DagsterInstance, cursor: str | None) -> Any:
    sensor = defs.resolve_sensor_def(name)
    resources = {WEBHOOK_RESOURCE: (defs.resources or {})[WEBHOOK_RESOURCE]}  # as the code location binds it
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                                        resources=resources))


def test_alerts_are_off_unless_configured(write_config, pg) -> None:
    write_config(pg.dsn("no_such_database"), database="ghost", deployment="production")
    defs = load_definitions()
    names = {sensor.name for sensor in defs.sensors or []}
    assert RUN_FAILURE_ALERT not in names and CHECK_FAILURE_ALERT not in names
    assert WEBHOOK_RESOURCE not in (defs.resources or {})


def test_a_failed_run_is_posted_once_as_slack_json_without_secrets(
        alerting: dg.Definitions, webhook: _Webhook, instance: dg.DagsterInstance) -> None:
    sensor = alerting.resolve_sensor_def(RUN_FAILURE_ALERT)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    first = _tick(alerting, RUN_FAILURE_ALERT, instance, None)  # starts watching from now
    assert webhook.posts == []
    result = alerting.resolve_job_def("ghost_backup_job").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    second = _tick(alerting, RUN_FAILURE_ALERT, instance, first.cursor)
    assert len(webhook.posts) == 1 and webhook.posts[0]["content_type"] == "application/json"
    [text] = webhook.texts()
    assert "ghost_backup_job" in text and result.run_id[:8] in text and "DBP004" in text
    assert PASSWORD not in text and "secret-token-xyz" not in text
    _tick(alerting, RUN_FAILURE_ALERT, instance, second.cursor)
    assert len(webhook.posts) == 1  # announced once


def test_a_failed_check_is_posted_once_and_again_only_when_it_fails_again(
        alerting: dg.Definitions, webhook: _Webhook, instance: dg.DagsterInstance) -> None:
    quiet = _tick(alerting, CHECK_FAILURE_ALERT, instance, None)  # may announce an earlier test's red check
    webhook.posts.clear()
    assert _tick(alerting, CHECK_FAILURE_ALERT, instance, quiet.cursor).skip_message == "no new check failure"
    assert webhook.posts == []
    job = alerting.resolve_job_def(RPO_CHECKS_JOB)
    assert job.execute_in_process(instance=instance).success  # the run works; the RPO check is red
    red = _tick(alerting, CHECK_FAILURE_ALERT, instance, quiet.cursor)
    [text] = webhook.texts()
    assert "rpo" in text and "ghost" in text and "ERROR" in text and "no backup has passed integrity" in text
    again = _tick(alerting, CHECK_FAILURE_ALERT, instance, red.cursor)
    assert len(webhook.posts) == 1  # the same failed evaluation is not announced twice
    assert job.execute_in_process(instance=instance).success
    _tick(alerting, CHECK_FAILURE_ALERT, instance, again.cursor)
    assert len(webhook.posts) == 2  # a new failed evaluation is


def test_a_refused_post_fails_the_tick_and_the_alert_is_sent_later(
        alerting: dg.Definitions, webhook: _Webhook, instance: dg.DagsterInstance) -> None:
    quiet = _tick(alerting, CHECK_FAILURE_ALERT, instance, None)  # may announce an earlier test's red check
    webhook.posts.clear()
    assert alerting.resolve_job_def(RPO_CHECKS_JOB).execute_in_process(instance=instance).success
    webhook.status = 500
    with pytest.raises(Exception, match="HTTP 500"):
        _tick(alerting, CHECK_FAILURE_ALERT, instance, quiet.cursor)
    webhook.status = 200
    _tick(alerting, CHECK_FAILURE_ALERT, instance, quiet.cursor)
    assert len(webhook.posts) == 2 and webhook.texts()[0] == webhook.texts()[1]


def test_only_http_urls_are_posted_to(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("do not read", encoding="utf-8")
    with pytest.raises(dg.Failure, match="https:// or http://"):
        AlertWebhookResource(url=f"file://{secret_file}").post("x")
