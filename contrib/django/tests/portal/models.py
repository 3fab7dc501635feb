"""A portal's own outbox model, in its own names and status values, for
the tests of OUTBOX_RELAY_MODEL with a mapping."""

import uuid

from django.db import models
from django.utils import timezone

from outbox_relay.models import AbstractOutboxEvent, outbox_indexes


class PortalEventOutbox(models.Model):
    class State(models.TextChoices):
        NEW = "NEW"
        SENT = "SENT"
        FAILED = "FAILED"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    topic = models.CharField(max_length=100)
    body = models.JSONField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.NEW)
    tries = models.PositiveSmallIntegerField(default=0)
    available_at = models.DateTimeField(default=timezone.now)
    error = models.TextField(blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    tenant = models.CharField(max_length=40, blank=True, default="")

    class Meta:
        db_table = "portal_outbox"
        indexes = outbox_indexes("portal_outbox", status="state", pending="NEW", dead="FAILED",
                                 next_attempt_at="available_at", created_at="created")


# The settings that point the app at PortalEventOutbox.
SETTINGS = {
    "OUTBOX_RELAY_MODEL": "portal.PortalEventOutbox",
    "OUTBOX_RELAY_FIELDS": {
        "event_id": "id",
        "event_type": "topic",
        "payload": "body",
        "status": "state",
        "attempts": "tries",
        "next_attempt_at": "available_at",
        "last_error": "error",
        "created_at": "created",
        "delivered_at": "sent_at",
    },
    "OUTBOX_RELAY_STATUS_VALUES": {"pending": "NEW", "delivered": "SENT", "dead": "FAILED"},
}


class LegacyOutbox(AbstractOutboxEvent):
    """An outbox whose table Django does not manage (and the tests never
    create)."""

    class Meta(AbstractOutboxEvent.Meta):
        managed = False
        db_table = "legacy_outbox"
