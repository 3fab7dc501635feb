from io import StringIO

from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import TestCase, override_settings

from outbox_relay.checks import check_outbox_table
from portal.models import SETTINGS as PORTAL


def ddl(*statements):
    with connection.cursor() as c:
        for s in statements:
            c.execute(s)


class TableCheckTest(TestCase):
    """Each test changes the migrated table in its own transaction, which
    the test case rolls back."""

    def assertIssue(self, level, id, *in_message):
        issues = check_outbox_table()
        self.assertEqual([(i.level, i.id) for i in issues], [(level, id)], issues)
        for text in in_message:
            self.assertIn(text, issues[0].msg + "\nHINT: " + (issues[0].hint or ""))
        return issues[0]

    def test_good_table_is_silent(self):
        self.assertEqual(check_outbox_table(), [])
        out = StringIO()
        call_command("check", stdout=out)
        self.assertEqual(out.getvalue().strip(), "System check identified no issues (0 silenced).")

    def test_manage_py_check_stops_on_an_error(self):
        ddl("ALTER TABLE portal_event_outbox ALTER COLUMN delivered_at SET NOT NULL")
        with self.assertRaises(SystemCheckError) as cm:
            call_command("check")
        self.assertIn("outbox_relay.OutboxEvent: (outbox_relay.E017) column 'delivered_at'", str(cm.exception))
        self.assertIn("HINT: null=True on OutboxEvent.delivered_at", str(cm.exception))

    def test_not_null_delivered_at(self):
        ddl("ALTER TABLE portal_event_outbox ALTER COLUMN delivered_at SET NOT NULL")
        self.assertIssue(40, "outbox_relay.E017", "column 'delivered_at' (role delivered_at) is NOT NULL",
                         "HINT: null=True on OutboxEvent.delivered_at, then makemigrations and migrate",
                         "ALTER TABLE portal_event_outbox ALTER COLUMN delivered_at DROP NOT NULL")

    def test_nullable_next_attempt_at(self):
        ddl("ALTER TABLE portal_event_outbox ALTER COLUMN next_attempt_at DROP NOT NULL")
        self.assertIssue(40, "outbox_relay.E016", "a row with NULL there is never due", "SET NOT NULL")

    def test_id_neither_primary_key_nor_unique(self):
        ddl("ALTER TABLE portal_event_outbox DROP CONSTRAINT portal_event_outbox_pkey")
        self.assertIssue(40, "outbox_relay.E013", "column 'id' (role id) is neither the primary key nor unique")

    def test_status_too_short(self):
        ddl("ALTER TABLE portal_event_outbox ALTER COLUMN status TYPE varchar(5)")
        self.assertIssue(40, "outbox_relay.E014", "varchar(5), too short for the status value 'delivered'", "max_length=9")

    def test_integer_status_with_text_values(self):
        ddl("DROP INDEX portal_event_outbox_due_idx", "DROP INDEX portal_event_outbox_dead_idx",
            "ALTER TABLE portal_event_outbox ALTER COLUMN status TYPE integer USING 0")
        self.assertIssue(40, "outbox_relay.E015", "is int4, but the status values pending, delivered, dead are not integers",
                         "OUTBOX_RELAY_STATUS_VALUES")

    def test_wrong_type(self):
        ddl("ALTER TABLE portal_event_outbox ALTER COLUMN attempts TYPE text")
        self.assertIssue(40, "outbox_relay.E012", "column 'attempts' (role attempts) is text; the relay takes int4 or int8 or int2",
                         "IntegerField(default=0)")

    def test_missing_column(self):
        ddl("ALTER TABLE portal_event_outbox DROP COLUMN last_error")
        self.assertIssue(40, "outbox_relay.E011", "table portal_event_outbox has no column 'last_error' for role last_error")

    def test_every_problem_is_named(self):
        ddl("ALTER TABLE portal_event_outbox ALTER COLUMN delivered_at SET NOT NULL",
            "ALTER TABLE portal_event_outbox DROP COLUMN payload")
        self.assertEqual([i.id for i in check_outbox_table()], ["outbox_relay.E011", "outbox_relay.E017"])

    @override_settings(**PORTAL)
    def test_own_table_through_the_mapping(self):
        self.assertEqual(check_outbox_table(), [])
        ddl("ALTER TABLE portal_outbox ALTER COLUMN sent_at SET NOT NULL")
        self.assertIssue(40, "outbox_relay.E017", "column 'sent_at' (role delivered_at)", "null=True on PortalEventOutbox.sent_at")

    @override_settings(**PORTAL)
    def test_a_warning_while_migrations_are_unapplied(self):
        ddl("ALTER TABLE portal_outbox ALTER COLUMN sent_at SET NOT NULL")
        MigrationRecorder.Migration.objects.filter(app="portal", name="0002_legacy_outbox").delete()
        self.assertIssue(30, "outbox_relay.W017", "portal has unapplied migrations, which may fix this")

    @override_settings(OUTBOX_RELAY_MODEL="portal.LegacyOutbox")
    def test_unmanaged_table_missing(self):
        self.assertIssue(40, "outbox_relay.E010", "table legacy_outbox does not exist")


class SettingsCheckTest(TestCase):
    def test_bad_settings(self):
        """Each bad setting is one error of its id, whose message names the
        culprit."""
        for settings, id, text in [
            ({"OUTBOX_RELAY_MODEL": "portal"}, "outbox_relay.E001",
             "OUTBOX_RELAY_MODEL: 'portal' is not of the form 'app_label.ModelName'"),
            ({"OUTBOX_RELAY_MODEL": "portal.Nothing"}, "outbox_relay.E001", "model 'portal.Nothing' is not installed"),
            ({"OUTBOX_RELAY_FIELDS": {"payload_json": "payload"}}, "outbox_relay.E002", "unknown role 'payload_json'"),
            ({"OUTBOX_RELAY_FIELDS": {"payload": "body"}}, "outbox_relay.E002",
             "outbox_relay.OutboxEvent has no field 'body' (for role payload)"),
            ({"OUTBOX_RELAY_MODEL": "portal.PortalEventOutbox"}, "outbox_relay.E002",
             "portal.PortalEventOutbox has no field 'event_id': add it, or name the field"),
            ({"OUTBOX_RELAY_FIELDS": {"last_error": "event_type"}}, "outbox_relay.E002",
             "column 'event_type' plays event_type and last_error; a column the relay writes (last_error)"),
            ({"OUTBOX_RELAY_STATUS_VALUES": {"failed": "FAILED"}}, "outbox_relay.E003", "unknown state 'failed'"),
            ({"OUTBOX_RELAY_STATUS_VALUES": {"pending": "dead"}}, "outbox_relay.E003", "three different values"),
        ]:
            with self.subTest(settings=settings), self.settings(**settings):
                issues = check_outbox_table()
                self.assertEqual([(i.level, i.id) for i in issues], [(40, id)], issues)
                self.assertIn(text, issues[0].msg)
