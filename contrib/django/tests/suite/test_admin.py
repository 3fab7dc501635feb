from datetime import timedelta

from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import TestCase, override_settings
from django.urls import reverse
from django.utils import timezone

from outbox_relay.admin import format_age
from outbox_relay.models import OutboxEvent
from portal.models import SETTINGS as PORTAL, PortalEventOutbox

CHANGELIST = reverse("admin:outbox_relay_outboxevent_changelist")


def db_clock():
    with connection.cursor() as c:
        c.execute("SELECT clock_timestamp()")
        return c.fetchone()[0]


def event(status, event_type="file.finalized", age=timedelta(0), **fields):
    now = timezone.now()
    return OutboxEvent.objects.create(event_type=event_type, payload={"file_id": 42, "name": "Q3 report.pdf"},
                                      status=status, created_at=now - age, **fields)


class OutboxAdminTest(TestCase):
    def setUp(self):
        self.client.force_login(User.objects.create_superuser("operator", "op@example.com", "pw"))
        self.dead = event("dead", attempts=1, last_error="runner answered 422 Unprocessable Entity: no such file",
                          age=timedelta(minutes=30))
        self.delivered = event("delivered", "file.deleted", attempts=1, delivered_at=timezone.now())
        self.pending = event("pending", attempts=3, age=timedelta(minutes=2, seconds=5))
        event("pending", "file.deleted")

    def listed(self, response):
        return {row.pk for row in response.context["cl"].result_list}

    def test_summary_at_the_top(self):
        r = self.client.get(CHANGELIST)
        self.assertContains(r, '<span class="outbox-pending"><strong>2</strong> pending, the oldest <strong>2 min 5 s</strong> old</span>', html=True)
        self.assertContains(r, '<a href="?status__exact=dead"><strong>1</strong> dead</a>', html=True)

    def test_filters(self):
        r = self.client.get(CHANGELIST, {"status__exact": "dead"})
        self.assertEqual(self.listed(r), {self.dead.pk})
        self.assertContains(r, "By status")
        r = self.client.get(CHANGELIST, {"event_type": "file.deleted"})
        self.assertEqual(len(self.listed(r)), 2)
        self.assertContains(r, "By event type")

    def test_search_by_event_id(self):
        r = self.client.get(CHANGELIST, {"q": str(self.dead.event_id)})
        self.assertEqual(self.listed(r), {self.dead.pk})
        r = self.client.get(CHANGELIST, {"q": "file.finalized"})
        self.assertEqual(r.status_code, 200)
        self.assertEqual(self.listed(r), set())

    def act(self, action, *rows, **extra):
        return self.client.post(CHANGELIST, {"action": action, "_selected_action": [r.pk for r in rows], **extra}, follow=True)

    def test_send_again_moves_dead_rows_only(self):
        before = db_clock()
        r = self.act("send_again", self.dead, self.pending)
        self.assertContains(r, "1 dead event moved back to pending: the relay sends it again.")
        self.assertContains(r, "1 selected event was not dead and was left alone.")
        row = OutboxEvent.objects.get(pk=self.dead.pk)
        self.assertEqual(row.event_id, self.dead.event_id)
        self.assertEqual((row.status, row.attempts, row.last_error, row.delivered_at), ("pending", 0, "", None))
        self.assertTrue(before <= row.next_attempt_at <= db_clock())
        self.assertEqual(OutboxEvent.objects.get(pk=self.pending.pk).attempts, 3)

    def test_replay_moves_delivered_rows_only(self):
        r = self.act("replay", self.delivered, self.dead)
        self.assertContains(r, "1 delivered event moved back to pending: the relay sends it again.")
        self.assertContains(r, "1 selected event was not delivered and was left alone.")
        row = OutboxEvent.objects.get(pk=self.delivered.pk)
        self.assertEqual((row.event_id, row.status, row.attempts, row.delivered_at), (self.delivered.event_id, "pending", 0, None))
        self.assertEqual(OutboxEvent.objects.get(pk=self.dead.pk).status, "dead")

    def test_send_again_across_pages(self):
        more = [event("dead") for _ in range(2)]
        r = self.act("send_again", self.dead, select_across="1", status__exact="dead")
        self.assertContains(r, "3 dead events moved back to pending")
        self.assertEqual(OutboxEvent.objects.filter(pk__in=[self.dead.pk] + [m.pk for m in more], status="pending").count(), 3)

    def test_nothing_to_send_again(self):
        r = self.act("send_again", self.pending)
        self.assertContains(r, "0 dead events moved back to pending")

    def test_change_view_pretty_prints_the_payload(self):
        r = self.client.get(reverse("admin:outbox_relay_outboxevent_change", args=[self.dead.pk]))
        # jsonb keeps keys shorter first.
        self.assertContains(r, '<pre class="outbox-payload">{\n  &quot;name&quot;: &quot;Q3 report.pdf&quot;,\n  &quot;file_id&quot;: 42\n}</pre>')
        self.assertContains(r, "runner answered 422 Unprocessable Entity")

    def test_no_adding(self):
        self.assertEqual(self.client.get(reverse("admin:outbox_relay_outboxevent_add")).status_code, 403)

    def test_actions_need_the_change_permission(self):
        viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_outboxevent"))
        self.client.force_login(viewer)
        r = self.client.get(CHANGELIST)
        self.assertNotContains(r, "Send again")
        self.act("send_again", self.dead)
        self.assertEqual(OutboxEvent.objects.get(pk=self.dead.pk).status, "dead")


@override_settings(**PORTAL)
class OwnModelAdminTest(TestCase):
    def setUp(self):
        self.client.force_login(User.objects.create_superuser("operator", "op@example.com", "pw"))

    def test_send_again_through_the_mapping(self):
        failed = PortalEventOutbox.objects.create(topic="file.finalized", body={"file_id": 1}, state="FAILED", tries=1, error="boom")
        sent = PortalEventOutbox.objects.create(topic="file.finalized", body={}, state="SENT", sent_at=timezone.now())
        url = reverse("portal_admin:portal_portaleventoutbox_changelist")
        r = self.client.get(url, {"state__exact": "FAILED"})
        self.assertEqual({row.pk for row in r.context["cl"].result_list}, {failed.pk})
        self.assertContains(r, '<a href="?state__exact=FAILED"><strong>1</strong> dead</a>', html=True)
        r = self.client.post(url, {"action": "send_again", "_selected_action": [failed.pk, sent.pk]}, follow=True)
        self.assertContains(r, "1 dead event moved back to pending")
        failed.refresh_from_db()
        self.assertEqual((failed.state, failed.tries, failed.error, failed.sent_at), ("NEW", 0, "", None))
        self.assertEqual(PortalEventOutbox.objects.get(pk=sent.pk).state, "SENT")


class FormatAgeTest(TestCase):
    def test_format_age(self):
        cases = [(None, ""), (timedelta(seconds=-3), "0 s"), (timedelta(seconds=45), "45 s"),
                 (timedelta(minutes=3), "3 min"), (timedelta(minutes=3, seconds=12), "3 min 12 s"),
                 (timedelta(hours=2, minutes=5, seconds=9), "2 h 5 min"), (timedelta(days=3, hours=4), "3 d 4 h")]
        for age, want in cases:
            self.assertEqual(format_age(age), want, age)
