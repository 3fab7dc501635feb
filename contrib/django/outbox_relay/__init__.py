"""Django side of outbox-relay: the outbox model, publish(), a system check
of the table, and the outbox in the admin."""

from .events import NotInTransaction, publish

__all__ = ["NotInTransaction", "publish"]
