"""publish(): write an event to the outbox in the caller's transaction."""

import json
import uuid

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, router, transaction
from django.db.models.functions import Now

from .conf import get_outbox


class NotInTransaction(RuntimeError):
    """publish() was called outside a transaction."""


def publish(event_type, payload, *, ordering_key=None, using=None):
    """Insert an event into the outbox, in the transaction open on the
    outbox's database, and return its event id. The relay sends it once
    the transaction commits; a rollback takes the event with it.

    Outside a transaction the event would be committed on its own, whether
    or not the change it describes is: that raises NotInTransaction. With
    an OpenTelemetry span current, its W3C trace context goes into the
    traceparent (and tracestate) field, when the model has one.
    """
    outbox = get_outbox()
    model = outbox.model
    using = using or router.db_for_write(model)
    if transaction.get_connection(using).get_autocommit():
        raise NotInTransaction(
            f"publish({event_type!r}) outside a transaction on database {using!r}: wrap the change and "
            "publish() in transaction.atomic() (or turn on ATOMIC_REQUESTS), so the event is written "
            "only if the change is"
        )
    if ordering_key is not None and not outbox.has("ordering_key"):
        raise ValueError(
            f"publish(ordering_key=…): {model._meta.label} has no ordering_key field "
            "(add one, or name it in OUTBOX_RELAY_FIELDS)"
        )
    values = {
        outbox.name("event_type"): event_type,
        outbox.name("payload"): _payload_value(outbox.fields["payload"], payload),
        outbox.name("status"): outbox.statuses["pending"],
        outbox.name("attempts"): 0,
        # The database's clock: the relay compares these with its now().
        outbox.name("next_attempt_at"): Now(),
        outbox.name("created_at"): Now(),
        outbox.name("last_error"): None if outbox.fields["last_error"].null else "",
        outbox.name("delivered_at"): None,
    }
    event_id = outbox.fields["event_id"]
    if not event_id.has_default():
        value = uuid.uuid4()
        values[event_id.name] = value if event_id.get_internal_type() == "UUIDField" else str(value)
    if ordering_key is not None:
        values[outbox.name("ordering_key")] = ordering_key
    if outbox.has("traceparent"):
        traceparent, tracestate = current_trace_context()
        if traceparent:
            values[outbox.name("traceparent")] = traceparent
            if tracestate and outbox.has("tracestate"):
                values[outbox.name("tracestate")] = tracestate
    row = model(**values)
    row.save(using=using, force_insert=True)
    return getattr(row, event_id.attname)


def _payload_value(field, payload):
    """The payload as the field stores it: JSON fields take the object, a
    text column its JSON text."""
    if isinstance(field, models.JSONField):
        return payload
    return json.dumps(payload, cls=DjangoJSONEncoder)



def current_trace_context():
    """The current span's W3C traceparent and tracestate, or ("", "")
    without OpenTelemetry or outside a span."""
    try:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return "", ""
    carrier = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", ""), carrier.get("tracestate", "")
