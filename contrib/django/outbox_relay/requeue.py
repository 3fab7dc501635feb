"""Sending events again: what ``outbox-relay requeue`` does, for the rows
of a queryset."""

from django.db.models.functions import Now

from .conf import get_outbox


def requeue(queryset, state):
    """Move the rows of queryset that are in state ("dead", or "delivered"
    to replay them) back to pending, due at once, as if never tried:
    attempts 0, no last error, no delivered time. Each keeps its event id,
    so the runner can tell a replay from a new event. One UPDATE, which
    leaves any row no longer in state alone; returns how many rows moved.
    """
    outbox = get_outbox()
    if state not in ("dead", "delivered"):
        raise ValueError(f"requeue takes dead or delivered rows, not {state!r}")
    last_error = outbox.fields["last_error"]
    return queryset.filter(**{outbox.name("status"): outbox.statuses[state]}).update(**{
        outbox.name("status"): outbox.statuses["pending"],
        outbox.name("attempts"): 0,
        outbox.name("next_attempt_at"): Now(),
        outbox.name("last_error"): None if last_error.null else "",
        outbox.name("delivered_at"): None,
    })
