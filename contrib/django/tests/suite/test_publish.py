import importlib.util
import uuid

from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase, override_settings

from outbox_relay import NotInTransaction, publish
from outbox_relay.models import OutboxEvent
from portal.models import SETTINGS as PORTAL, PortalEventOutbox

from .harness import opentelemetry_stand_in


def db_clock():
    with connection.cursor() as c:
        c.execute("SELECT clock_timestamp()")
        return c.fetchone()[0]


class PublishTest(TestCase):
    def test_inserts_a_pending_row_due_now(self):
        before = db_clock()
        event_id = publish("file.finalized", {"file_id": 42, "name": "Q3 report.pdf"})
        after = db_clock()
        row = OutboxEvent.objects.get()
        self.assertEqual(row.event_id, event_id)
        self.assertIsInstance(event_id, uuid.UUID)
        self.assertEqual((row.event_type, row.payload), ("file.finalized", {"file_id": 42, "name": "Q3 report.pdf"}))
        self.assertEqual((row.status, row.attempts, row.last_error, row.delivered_at), ("pending", 0, "", None))
        self.assertTrue(before <= row.next_attempt_at <= after, (before, row.next_attempt_at, after))
        self.assertTrue(before <= row.created_at <= after, (before, row.created_at, after))
        self.assertIsNone(row.ordering_key)

    def test_ordering_key(self):
        publish("invoice.paid", {"n": 1}, ordering_key="customer-7")
        self.assertEqual(OutboxEvent.objects.get().ordering_key, "customer-7")

    @override_settings(**PORTAL)
    def test_own_model_through_the_mapping(self):
        before = db_clock()
        event_id = publish("file.finalized", {"file_id": 1})
        after = db_clock()
        row = PortalEventOutbox.objects.get()
        self.assertEqual(row.id, event_id)
        self.assertEqual((row.topic, row.body, row.state, row.tries, row.error, row.sent_at),
                         ("file.finalized", {"file_id": 1}, "NEW", 0, "", None))
        self.assertTrue(before <= row.available_at <= after, (before, row.available_at, after))

    @override_settings(**PORTAL)
    def test_ordering_key_without_a_field_is_refused(self):
        with self.assertRaisesMessage(ValueError, "portal.PortalEventOutbox has no ordering_key field"):
            publish("file.finalized", {}, ordering_key="k")
        self.assertFalse(PortalEventOutbox.objects.exists())

    def test_no_trace_context_without_opentelemetry(self):
        if importlib.util.find_spec("opentelemetry"):
            self.skipTest("OpenTelemetry is installed")
        publish("file.finalized", {})
        self.assertEqual((OutboxEvent.objects.get().traceparent, OutboxEvent.objects.get().tracestate), ("", ""))

    def test_trace_context_of_the_current_span(self):
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        with opentelemetry_stand_in(traceparent, "vendor=1"):
            publish("file.finalized", {})
        row = OutboxEvent.objects.get()
        self.assertEqual((row.traceparent, row.tracestate), (traceparent, "vendor=1"))


class PublishTransactionTest(TransactionTestCase):
    def test_refused_outside_a_transaction(self):
        with self.assertRaises(NotInTransaction) as cm:
            publish("file.finalized", {"file_id": 42})
        self.assertIn("outside a transaction on database 'default'", str(cm.exception))
        self.assertIn("transaction.atomic()", str(cm.exception))
        self.assertFalse(OutboxEvent.objects.exists())

    def test_rolled_back_with_the_change(self):
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                publish("file.finalized", {"file_id": 42})
                raise RuntimeError("the change failed")
        self.assertFalse(OutboxEvent.objects.exists())

    def test_committed_with_the_change(self):
        with transaction.atomic():
            event_id = publish("file.finalized", {"file_id": 42})
        self.assertEqual(list(OutboxEvent.objects.values_list("event_id", flat=True)), [event_id])
