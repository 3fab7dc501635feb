"""The system check: does the outbox table hold what the relay needs?

It applies the rules of the relay's own start-up check of the table (the
``table`` item of ``outbox-relay check``) to the table in the database, as
the catalog describes it: a column for every role, of a type the relay
takes, a NOT NULL next_attempt_at, a nullable delivered_at, a unique id, a
status column that holds the status values.
"""

from django.core import checks
from django.db import DatabaseError, connections, router
from django.db.migrations.executor import MigrationExecutor

from . import contract
from .conf import SettingError, get_outbox

SETTING_IDS = {
    "OUTBOX_RELAY_MODEL": "outbox_relay.E001",
    "OUTBOX_RELAY_FIELDS": "outbox_relay.E002",
    "OUTBOX_RELAY_STATUS_VALUES": "outbox_relay.E003",
}

# The Django fields that make a column of an accepted type, for the hints.
FIELD_HINTS = {
    "id": "BigAutoField(primary_key=True) or UUIDField(primary_key=True)",
    "event_id": "UUIDField(unique=True, default=uuid.uuid4)",
    "event_type": "CharField or TextField",
    "payload": "JSONField",
    "status": "CharField with choices, or IntegerField with IntegerChoices",
    "attempts": "IntegerField(default=0)",
    "next_attempt_at": "DateTimeField(default=timezone.now)",
    "last_error": 'TextField(blank=True, default="")',
    "created_at": "DateTimeField(default=timezone.now)",
    "delivered_at": "DateTimeField(null=True, blank=True)",
    "ordering_key": "TextField(null=True, blank=True)",
    "traceparent": 'CharField(max_length=55, blank=True, default="")',
    "tracestate": 'CharField(max_length=512, blank=True, default="")',
}

# Every column of a table, and whether the named one is the key of a
# unique index of its own (the primary key or a UNIQUE constraint): the
# relay's own catalog query.
COLUMNS_SQL = """SELECT a.attname, ty.typname,
    CASE WHEN ty.typname IN ('varchar', 'bpchar') AND a.atttypmod > 4 THEN a.atttypmod - 4 ELSE 0 END,
    a.attnotnull,
    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisunique
        AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum AND i.indpred IS NULL) AND a.attname = %s
FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"""


@checks.register()
def check_outbox_table(app_configs=None, **kwargs):
    try:
        outbox = get_outbox()
    except SettingError as e:
        return [checks.Error(str(e), id=SETTING_IDS[e.setting])]
    model = outbox.model
    if app_configs is not None and model._meta.app_config not in app_configs:
        return []
    alias = router.db_for_write(model)
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return [checks.Warning(
            f"table {outbox.table} not checked: database {alias!r} is {connection.vendor}, and the relay needs PostgreSQL",
            obj=model, id="outbox_relay.W002")]
    try:
        found, id_unique = read_columns(connection, outbox.table, outbox.column("id"))
        problems = table_problems(outbox, found, id_unique) if found else []
        # Migrations not yet applied may change the table: then the
        # problems are warnings, so that they do not stop manage.py
        # migrate itself.
        migrating = problems and has_unapplied_migrations(connection, model._meta.app_label)
    except DatabaseError as e:
        return [checks.Warning(
            f"cannot read table {outbox.table} from database {alias!r}: {str(e).strip().splitlines()[0]}",
            hint="manage.py check reads the outbox table's columns from the database",
            obj=model, id="outbox_relay.W001")]
    if not found:
        if model._meta.managed:
            return []  # manage.py migrate creates it
        return [checks.Error(f"table {outbox.table} does not exist", hint="create it, or point OUTBOX_RELAY_MODEL at the outbox model",
                             obj=model, id="outbox_relay.E010")]
    if migrating:
        return [checks.Warning(msg, hint=f"{hint}; {model._meta.app_label} has unapplied migrations, which may fix this",
                               obj=model, id=f"outbox_relay.W{number:03d}") for number, msg, hint in problems]
    return [checks.Error(msg, hint=hint, obj=model, id=f"outbox_relay.E{number:03d}") for number, msg, hint in problems]


def read_columns(connection, table, id_column):
    """{column name: (type, varchar length or 0, NOT NULL)} of table, and
    whether id_column has a unique index of its own; ({}, False) when the
    table does not exist."""
    with connection.cursor() as cursor:
        cursor.execute(COLUMNS_SQL, [id_column, connection.ops.quote_name(table)])
        rows = cursor.fetchall()
    found = {name: (typ, length, not_null) for name, typ, length, not_null, _ in rows}
    return found, any(unique for *_, unique in rows)


def has_unapplied_migrations(connection, app_label):
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return any(migration.app_label == app_label for migration, _ in plan)


def table_problems(outbox, found, id_unique):
    """(number, message, hint) for each thing in the table the relay could
    not use, in the roles' order."""
    problems = []
    for role in outbox.roles():
        column = outbox.column(role)
        field = f"{outbox.model._meta.object_name}.{outbox.name(role)}"
        if column not in found:
            problems.append((11, f"table {outbox.table} has no column {column!r} for role {role} (field {field})",
                             "run manage.py migrate, or name the field that plays the role in OUTBOX_RELAY_FIELDS"))
            continue
        typ, length, not_null = found[column]
        if typ not in contract.TYPES[role]:
            problems.append((12, f"column {column!r} (role {role}) is {typ}; the relay takes {' or '.join(contract.TYPES[role])}",
                             f"make {field} a {FIELD_HINTS[role]}"))
            continue
        problem = column_problem(outbox, role, field, (typ, length, not_null), id_unique)
        if problem:
            problems.append(problem)
    return problems


def column_problem(outbox, role, field, found, id_unique):
    """What the relay's rules say of a column of an accepted type, if
    anything: (number, message, hint)."""
    typ, length, not_null = found
    column, table = outbox.column(role), outbox.table
    alter = f"ALTER TABLE {table} ALTER COLUMN {column}"
    if role == "id" and not id_unique:
        return (13, f"column {column!r} (role id) is neither the primary key nor unique: a claim must name one row",
                "map id to the primary key in OUTBOX_RELAY_FIELDS, or make the field unique=True")
    if role == "status":
        values = [outbox.statuses[s] for s in contract.STATES]
        if typ in contract.INTEGER_TYPES and not all(contract.is_integer_value(v) for v in values):
            return (15, f"column {column!r} (role status) is {typ}, but the status values {', '.join(map(str, values))} are not integers",
                    'set OUTBOX_RELAY_STATUS_VALUES to the integers of your choices, e.g. {"pending": 0, "delivered": 1, "dead": 2}')
        longest = max(values, key=lambda v: len(str(v)))
        if length and len(str(longest)) > length:
            return (14, f"column {column!r} (role status) is varchar({length}), too short for the status value {longest!r}",
                    f"max_length={len(str(longest))} or more on {field} ({alter} TYPE varchar({len(str(longest))})), or shorter status values")
    if role == "next_attempt_at" and not not_null:
        return (16, f"column {column!r} (role next_attempt_at) allows NULL, and a row with NULL there is never due",
                f"drop null=True from {field}, then makemigrations and migrate ({alter} SET NOT NULL)")
    if role == "delivered_at" and not_null:
        return (17, f"column {column!r} (role delivered_at) is NOT NULL, but it stays empty until an event is delivered",
                f"null=True on {field}, then makemigrations and migrate ({alter} DROP NOT NULL)")
    return None
