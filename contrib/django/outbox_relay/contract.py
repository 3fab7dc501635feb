"""The relay's table contract: the roles its columns play, the column types
it accepts for each, and the status values it writes.

This mirrors internal/store/columns.go and internal/store/schema.go of the
relay; tests run the relay binary on the same tables to keep the two in
step.
"""

# Every role the table must have a column for, in the contract's order.
ROLES = (
    "id",
    "event_id",
    "event_type",
    "payload",
    "status",
    "attempts",
    "next_attempt_at",
    "last_error",
    "created_at",
    "delivered_at",
)

# Roles played only when mapped: ordered delivery per key, W3C trace context.
OPTIONAL_ROLES = ("ordering_key", "traceparent", "tracestate")

# Roles the relay only reads: one column may play two of them (event_id=id
# when the primary key is a UUID). A column the relay writes plays one role.
READ_ONLY_ROLES = ("id", "event_id", "event_type", "payload", "created_at") + OPTIONAL_ROLES

# The PostgreSQL types (pg_type names) the relay accepts for each role.
TYPES = {
    "id": ("int8", "int4", "uuid", "text", "varchar"),
    "event_id": ("uuid", "text", "varchar"),
    "event_type": ("text", "varchar"),
    "payload": ("jsonb", "json", "text"),
    "status": ("text", "varchar", "int2", "int4", "int8"),
    "attempts": ("int4", "int8", "int2"),
    "next_attempt_at": ("timestamptz", "timestamp"),
    "last_error": ("text", "varchar"),
    "created_at": ("timestamptz", "timestamp"),
    "delivered_at": ("timestamptz", "timestamp"),
    "ordering_key": ("text", "varchar", "int8", "int4", "int2", "uuid"),
    "traceparent": ("text", "varchar", "bpchar"),
    "tracestate": ("text", "varchar"),
}

STATES = ("pending", "delivered", "dead")
DEFAULT_STATUSES = {state: state for state in STATES}

INTEGER_TYPES = ("int2", "int4", "int8")


def is_integer_value(value):
    """Whether a status value is an integer, as an integer status column
    (IntegerChoices) needs; the relay takes 32-bit ones."""
    try:
        number = int(str(value))
    except ValueError:
        return False
    return -(2**31) <= number < 2**31
