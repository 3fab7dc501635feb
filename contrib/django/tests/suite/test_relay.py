"""The app and the real relay binary on the same tables: the settings
outbox_relay_env prints deliver the app's events, the relay's own check
agrees with the system check, and a requeued row is sent again."""

from io import StringIO

from django.core.management import call_command
from django.db import connection, transaction
from django.test import TransactionTestCase, override_settings

from outbox_relay import publish
from outbox_relay.checks import check_outbox_table
from outbox_relay.models import OutboxEvent
from outbox_relay.requeue import requeue
from portal.models import SETTINGS as PORTAL, PortalEventOutbox

from .harness import Relay, Runner, database_url, opentelemetry_stand_in, relay_env, run_relay_command, wait_for

DEFAULT_ENV = [
    "RELAY_OUTBOX_TABLE=portal_event_outbox",
    "RELAY_COLUMNS=id=id,event_id=event_id,event_type=event_type,payload=payload,status=status,attempts=attempts,"
    "next_attempt_at=next_attempt_at,last_error=last_error,created_at=created_at,delivered_at=delivered_at,"
    "ordering_key=ordering_key,traceparent=traceparent,tracestate=tracestate",
    "RELAY_STATUS_VALUES=pending=pending,delivered=delivered,dead=dead",
]


def outbox_relay_env():
    out = StringIO()
    call_command("outbox_relay_env", stdout=out)
    return out.getvalue().splitlines()


class RelayTestCase(TransactionTestCase):
    def start(self, answer=None):
        """A runner, and the relay configured by outbox_relay_env's lines
        plus the two settings every relay needs; sweep-only, since the
        test database is dropped at the end and a slot would hold it."""
        self.runner = Runner(answer)
        self.addCleanup(self.runner.stop)
        self.relay = Relay(relay_env(*outbox_relay_env(), f"RELAY_DATABASE_URL={database_url()}",
                                     f"RELAY_RUNNER_URL={self.runner.url}", "RELAY_CDC=off",
                                     "RELAY_SWEEP_INTERVAL=100ms", "RELAY_LISTEN_ADDR=off", "RELAY_LOG_FORMAT=text"))
        self.addCleanup(self.relay.stop)

    def wait_for(self, what, condition):
        try:
            return wait_for(what, condition)
        except AssertionError as e:
            raise AssertionError(f"{e}\nrelay log:\n{self.relay.output()}") from None


class EnvTest(TransactionTestCase):
    def test_default_model(self):
        self.assertEqual(outbox_relay_env(), DEFAULT_ENV)

    @override_settings(**PORTAL)
    def test_own_model(self):
        self.assertEqual(outbox_relay_env(), [
            "RELAY_OUTBOX_TABLE=portal_outbox",
            "RELAY_COLUMNS=id=id,event_id=id,event_type=topic,payload=body,status=state,attempts=tries,"
            "next_attempt_at=available_at,last_error=error,created_at=created,delivered_at=sent_at",
            "RELAY_STATUS_VALUES=pending=NEW,delivered=SENT,dead=FAILED",
        ])


class DeliveryTest(RelayTestCase):
    def test_published_event_is_delivered(self):
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        self.start()
        with transaction.atomic(), opentelemetry_stand_in(traceparent):
            event_id = publish("file.finalized", {"file_id": 42})
        request = self.wait_for("the runner to receive the event", lambda: self.runner.received())[0]
        self.assertEqual({k: request["body"][k] for k in ("id", "type", "attempt", "data")},
                         {"id": str(event_id), "type": "file.finalized", "attempt": 1, "data": {"file_id": 42}})
        self.assertEqual(request["headers"].get("traceparent"), traceparent)
        row = self.wait_for("the row to be delivered",
                            lambda: OutboxEvent.objects.filter(event_id=event_id, status="delivered").first())
        self.assertEqual((row.attempts, row.last_error), (1, ""))
        self.assertIsNotNone(row.delivered_at)

    @override_settings(**PORTAL)
    def test_own_model_dead_then_sent_again(self):
        accept = []
        self.start(lambda body: 204 if accept else 422)
        with transaction.atomic():
            event_id = publish("file.finalized", {"file_id": 7})
        row = self.wait_for("the refused row to be dead", lambda: PortalEventOutbox.objects.filter(state="FAILED").first())
        self.assertEqual((row.id, row.tries), (event_id, 1))
        self.assertIn("422", row.error)
        accept.append(True)
        self.assertEqual(requeue(PortalEventOutbox.objects.all(), "dead"), 1)
        self.wait_for("the row to be sent again", lambda: PortalEventOutbox.objects.filter(state="SENT").first())
        ids = [(r["body"]["id"], r["body"]["attempt"]) for r in self.runner.received()]
        self.assertEqual(ids, [(str(event_id), 1), (str(event_id), 1)])


# Changes to the migrated table, each one the relay refuses, by the
# column its refusal names; None: the table as migrated.
VARIANTS = [
    (None, [], None),
    ("delivered_at NOT NULL", ["ALTER TABLE portal_event_outbox ALTER COLUMN delivered_at SET NOT NULL"], "delivered_at"),
    ("next_attempt_at nullable", ["ALTER TABLE portal_event_outbox ALTER COLUMN next_attempt_at DROP NOT NULL"], "next_attempt_at"),
    ("id not unique", ["ALTER TABLE portal_event_outbox DROP CONSTRAINT portal_event_outbox_pkey"], "id"),
    ("status too short", ["ALTER TABLE portal_event_outbox ALTER COLUMN status TYPE varchar(5)"], "status"),
    ("integer status", ["DROP INDEX portal_event_outbox_due_idx", "DROP INDEX portal_event_outbox_dead_idx",
                        "ALTER TABLE portal_event_outbox ALTER COLUMN status TYPE integer USING 0"], "status"),
    ("attempts text", ["ALTER TABLE portal_event_outbox ALTER COLUMN attempts TYPE text"], "attempts"),
    ("no last_error", ["ALTER TABLE portal_event_outbox DROP COLUMN last_error"], "last_error"),
    ("traceparent integer", ["ALTER TABLE portal_event_outbox ALTER COLUMN traceparent TYPE integer USING 0"], "traceparent"),
]


class SameRulesAsTheRelayTest(TransactionTestCase):
    def test_the_relay_and_the_system_check_agree(self):
        env = relay_env(*outbox_relay_env(), f"RELAY_DATABASE_URL={database_url()}", "RELAY_CDC=off", "RELAY_LISTEN_ADDR=off")
        for name, statements, column in VARIANTS:
            with self.subTest(name or "as migrated"):
                with connection.cursor() as c:
                    for s in statements:
                        c.execute(s)
                try:
                    issues = check_outbox_table()
                    code, _, stderr = run_relay_command("status", env=env)
                finally:
                    self.recreate_table()
                if column is None:
                    self.assertEqual(issues, [])
                    self.assertEqual(code, 0, stderr)
                else:
                    self.assertEqual([i.level for i in issues], [40], issues)
                    self.assertIn(f"'{column}'", issues[0].msg)
                    self.assertEqual(code, 1, stderr)
                    self.assertIn(f'column "{column}"', stderr)

    def recreate_table(self):
        with connection.schema_editor() as editor:
            editor.execute("DROP TABLE IF EXISTS portal_event_outbox")
            editor.create_model(OutboxEvent)
