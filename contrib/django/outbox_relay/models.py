"""The outbox model: an abstract one with the relay's columns, and the
app's own table made from it (unless OUTBOX_RELAY_MODEL names another)."""

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


def outbox_indexes(table, *, status="status", pending="pending", dead="dead",
                   next_attempt_at="next_attempt_at", created_at="created_at"):
    """The two partial indexes the relay's queries use, under the names
    ``outbox-relay migrate`` gives them (so it adds no second copy): due
    rows by next_attempt_at, and dead rows by created_at. Arguments are
    field names and the status values. Django limits index names to 30
    characters: for a table name longer than 21, pass a shorter prefix as
    table (migrate then adds its own copies, under the full names)."""
    return [
        models.Index(fields=[next_attempt_at], condition=Q(**{status: pending}), name=f"{table}_due_idx"),
        models.Index(fields=[created_at], condition=Q(**{status: dead}), name=f"{table}_dead_idx"),
    ]


class AbstractOutboxEvent(models.Model):
    """The relay's table contract in Django's conventions. The application
    writes event_type and payload (through ``publish``); the relay writes
    status, attempts, next_attempt_at, last_error and delivered_at."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        DELIVERED = "delivered", _("delivered")
        DEAD = "dead", _("dead")

    id = models.BigAutoField(primary_key=True)
    event_id = models.UUIDField(_("event id"), default=uuid.uuid4, unique=True, editable=False)
    event_type = models.CharField(_("event type"), max_length=200)
    payload = models.JSONField(_("payload"), default=dict)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.IntegerField(_("attempts"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt at"), default=timezone.now)
    last_error = models.TextField(_("last error"), blank=True, default="")
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    delivered_at = models.DateTimeField(_("delivered at"), null=True, blank=True)
    # Optional roles: the relay uses them once RELAY_COLUMNS maps them
    # (manage.py outbox_relay_env prints the mapping).
    ordering_key = models.TextField(_("ordering key"), null=True, blank=True)
    traceparent = models.CharField(max_length=55, blank=True, default="")
    tracestate = models.CharField(max_length=512, blank=True, default="")

    class Meta:
        abstract = True
        verbose_name = _("outbox event")
        verbose_name_plural = _("outbox events")

    def __str__(self):
        return f"{self.event_type} {self.event_id}"


class OutboxEvent(AbstractOutboxEvent):
    """The app's outbox, in the table the relay reads by default
    (RELAY_OUTBOX_TABLE=portal_event_outbox)."""

    class Meta(AbstractOutboxEvent.Meta):
        abstract = False
        swappable = "OUTBOX_RELAY_MODEL"
        db_table = "portal_event_outbox"
        indexes = outbox_indexes("portal_event_outbox")
