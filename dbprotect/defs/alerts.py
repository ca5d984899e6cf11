"""Alerts without Dagster+: a run-failure sensor and a check-failure sensor posting to a webhook.

Open-source Dagster has no alert policies, so two sensors do the job (issue 13, point 6):

- ``dbprotect_run_failure_alert``: a run-failure sensor over every job of this code location.
- ``dbprotect_check_failure_alert``: polls the latest evaluation of every asset check of this code
  location (OSS has no check-failure hook) and alerts once per failed evaluation; its cursor holds
  the newest evaluation id already seen per check, so a red check is announced once, not every poll,
  and announced again when it fails again after passing.

Both post Slack-compatible JSON (``{"text": ...}``: Slack, Mattermost, Rocket.Chat and most chat
webhooks accept it) to the URL in ``alerts.webhook_url_env``. They exist only when ``alerts:`` is
configured (off otherwise) and run by default once it is. The URL is a credential: it reaches the
sensors as an ``EnvVar`` resource and is registered for redaction; every text posted is scrubbed of
registered secrets and DSN passwords. A post that fails fails the tick (Dagster shows the sensor
red) and leaves the cursor where it was, so the alert is sent by a later tick (repeated, never lost).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import dagster as dg

from dbprotect.core.config.model import Config
from dbprotect.core.pg.dsn import scrub_text
from dbprotect.core.redact import register

RUN_FAILURE_ALERT = "dbprotect_run_failure_alert"
CHECK_FAILURE_ALERT = "dbprotect_check_failure_alert"
WEBHOOK_RESOURCE = "alert_webhook"
#: Seconds a webhook gets to answer; a sensor tick must stay well inside Dagster's tick timeout.
POST_TIMEOUT_SECONDS = 10
#: Longest text posted: a chat message, not a log dump.
MAX_TEXT = 1500


class AlertWebhookResource(dg.ConfigurableResource):
    """Where alerts go: a Slack-compatible incoming-webhook URL (from ``alerts.webhook_url_env``)."""

    url: str

    def post(self, text: str) -> None:
        """POST ``{"text": text}`` (scrubbed, shortened); raise :class:`dagster.Failure` when it is refused."""
        register(self.url)
        if not self.url.startswith(("https://", "http://")):  # urllib would also open file:// and ftp://
            raise dg.Failure("alert webhook URL must start with https:// or http://")
        body = json.dumps({"text": scrub_text(text)[:MAX_TEXT]}).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=POST_TIMEOUT_SECONDS) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise dg.Failure(scrub_text(f"alert webhook unreachable: {reason}")) from None
        if not 200 <= status < 300:
            raise dg.Failure(f"alert webhook refused the alert: HTTP {status}")


def run_failure_text(job_name: str, run_id: str, tags: dict[str, str], message: str | None) -> str:
    """One chat line per failed run: which job, which database, why."""
    database = tags.get("dbprotect/database")
    about = f" ({database})" if database else ""
    return f":red_circle: dbprotect run failed: {job_name}{about}, run {run_id[:8]}: {message or 'no message'}"


def check_failure_text(check: dg.AssetCheckKey, evaluation: dg.AssetCheckEvaluation | None) -> str:
    """One chat line per failed check evaluation: which check of which asset, and its description."""
    severity = evaluation.severity.value if evaluation is not None else "ERROR"
    detail = (evaluation.description if evaluation is not None else None) or "failed"
    return f":red_circle: dbprotect check {check.name} on {check.asset_key.to_user_string()} {severity}: {detail}"


def _step_failure_reason(event: dg.DagsterEvent) -> str | None:
    """Why a step failed, in one line: our ``error[DBPnnn]: ...`` description, else the error's message."""
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return f"{event.step_key}: {data.user_failure_data.description}"
    if data.error is not None:
        return f"{event.step_key}: {data.error.message.strip().splitlines()[0] if data.error.message else ''}"
    return None


def _run_failure_sensor() -> dg.SensorDefinition:
    @dg.run_failure_sensor(name=RUN_FAILURE_ALERT, default_status=dg.DefaultSensorStatus.RUNNING,
                           description="Posts every failed run of this code location to the alert webhook.")
    def run_failure_alert(context: dg.RunFailureSensorContext, alert_webhook: AlertWebhookResource) -> None:
        run = context.dagster_run
        reasons = [_step_failure_reason(event) for event in context.get_step_failure_events()]
        message = "; ".join(reason for reason in reasons if reason) or context.failure_event.message
        alert_webhook.post(run_failure_text(run.job_name, run.run_id, dict(run.tags), message))

    return run_failure_alert


def _check_failure_sensor(poll_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(name=CHECK_FAILURE_ALERT, minimum_interval_seconds=poll_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Polls the latest evaluation of every asset check here; posts each new failure.")
    def check_failure_alert(context: dg.SensorEvaluationContext,
                            alert_webhook: AlertWebhookResource) -> dg.SensorResult:
        seen: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        checks = sorted(context.repository_def.asset_graph.asset_check_keys, key=lambda key: key.to_user_string())
        latest = context.instance.event_log_storage.get_latest_asset_check_execution_by_key(checks)
        posted = 0
        for check in checks:
            record = latest.get(check)
            name = check.to_user_string()
            if record is None or record.id <= seen.get(name, 0):
                continue
            if record.status.value == "FAILED":
                evaluation = record.event.asset_check_evaluation if record.event is not None else None
                # A refused post raises: the tick fails and keeps the old cursor, so this alert (and
                # any posted before it in this tick) is sent again: an alert repeated, never lost.
                alert_webhook.post(check_failure_text(check, evaluation))
                posted += 1
            if record.status.value != "PLANNED":  # a planned check may still fail: look again
                seen[name] = record.id
        return dg.SensorResult(cursor=json.dumps(seen, sort_keys=True),
                               skip_reason=None if posted else dg.SkipReason("no new check failure"))

    return check_failure_alert


def build_alert_definitions(config: Config) -> dg.Definitions:
    """The two alert sensors and their webhook resource; nothing when ``alerts:`` is not configured."""
    if config.alerts is None:
        return dg.Definitions()
    return dg.Definitions(
        sensors=[_run_failure_sensor(), _check_failure_sensor(config.alerts.check_poll_seconds)],
        resources={WEBHOOK_RESOURCE: AlertWebhookResource(url=dg.EnvVar(config.alerts.webhook_url_env))},
    )
