"""The outbox model in use and the fields that play the relay's roles.

Three settings, all optional:

OUTBOX_RELAY_MODEL
    "app_label.ModelName" of the outbox model; the app's own
    ``outbox_relay.OutboxEvent`` when unset.
OUTBOX_RELAY_FIELDS
    {role: field name} for a model whose fields are not named after the
    roles; a role not named is played by the field of its name (``id`` by
    the primary key).
OUTBOX_RELAY_STATUS_VALUES
    {"pending": …, "delivered": …, "dead": …}, the values the status field
    holds; "pending", "delivered" and "dead" when unset.

They say what the relay's RELAY_OUTBOX_TABLE, RELAY_COLUMNS and
RELAY_STATUS_VALUES say, in Django's terms: ``manage.py outbox_relay_env``
prints those from them.
"""

from django.apps import apps
from django.conf import settings
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured

from . import contract

DEFAULT_MODEL = "outbox_relay.OutboxEvent"


class SettingError(ImproperlyConfigured):
    """A setting of this app that cannot be used; ``setting`` names it."""

    def __init__(self, setting, message):
        super().__init__(f"{setting}: {message}")
        self.setting = setting


def model_label():
    return getattr(settings, "OUTBOX_RELAY_MODEL", None) or DEFAULT_MODEL


def get_outbox_model():
    """The outbox model class, as OUTBOX_RELAY_MODEL names it."""
    label = model_label()
    try:
        return apps.get_model(label, require_ready=False)
    except ValueError:
        raise SettingError("OUTBOX_RELAY_MODEL", f"{label!r} is not of the form 'app_label.ModelName'") from None
    except LookupError:
        raise SettingError("OUTBOX_RELAY_MODEL", f"model {label!r} is not installed") from None


class Outbox:
    """The outbox model as the relay uses it: the field that plays each
    role, and the values of the status field for the three states."""

    def __init__(self, model, fields, statuses):
        self.model = model
        self.fields = fields
        self.statuses = statuses

    @property
    def table(self):
        return self.model._meta.db_table

    def has(self, role):
        return role in self.fields

    def name(self, role):
        """The name of the field that plays role, for the ORM."""
        return self.fields[role].name

    def column(self, role):
        """The name of the column that plays role, for the relay."""
        return self.fields[role].column

    def roles(self):
        """The roles played, required ones first, in the contract's order."""
        return [r for r in contract.ROLES + contract.OPTIONAL_ROLES if r in self.fields]

    def relay_env(self):
        """The relay's settings for this table, one NAME=value per line."""
        columns = ",".join(f"{r}={self.column(r)}" for r in self.roles())
        statuses = ",".join(f"{s}={self.statuses[s]}" for s in contract.STATES)
        return [
            f"RELAY_OUTBOX_TABLE={self.table}",
            f"RELAY_COLUMNS={columns}",
            f"RELAY_STATUS_VALUES={statuses}",
        ]


def get_outbox():
    """The Outbox for the settings in force, or a SettingError naming the
    setting that cannot be used and why."""
    model = get_outbox_model()
    return Outbox(model, _fields(model), _statuses())


def _fields(model):
    mapped = getattr(settings, "OUTBOX_RELAY_FIELDS", None) or {}
    if not isinstance(mapped, dict):
        raise SettingError("OUTBOX_RELAY_FIELDS", "must be a dict of role: field name")
    known = contract.ROLES + contract.OPTIONAL_ROLES
    for role in mapped:
        if role not in known:
            raise SettingError("OUTBOX_RELAY_FIELDS", f"unknown role {role!r} (roles: {', '.join(known)})")
    label = model._meta.label
    fields = {}
    for role in known:
        name = mapped.get(role)
        if name is None and role == "id":
            fields[role] = model._meta.pk
            continue
        try:
            field = model._meta.get_field(name or role)
        except FieldDoesNotExist:
            if name is not None:
                raise SettingError("OUTBOX_RELAY_FIELDS", f"{label} has no field {name!r} (for role {role})") from None
            if role in contract.OPTIONAL_ROLES:
                continue
            raise SettingError(
                "OUTBOX_RELAY_FIELDS",
                f"{label} has no field {role!r}: add it, or name the field that plays role {role} "
                f"(OUTBOX_RELAY_FIELDS = {{{role!r}: '<field>'}})",
            ) from None
        if not getattr(field, "concrete", False) or field.many_to_many:
            raise SettingError("OUTBOX_RELAY_FIELDS", f"{label}.{field.name} (role {role}) is not a column")
        fields[role] = field
    _check_shared(fields)
    return fields


def _check_shared(fields):
    players = {}
    for role, field in fields.items():
        players.setdefault(field.column, []).append(role)
    for column, roles in players.items():
        written = [r for r in roles if r not in contract.READ_ONLY_ROLES]
        if len(roles) > 1 and written:
            raise SettingError(
                "OUTBOX_RELAY_FIELDS",
                f"column {column!r} plays {' and '.join(roles)}; a column the relay writes ({written[0]}) must play one role only",
            )


def _statuses():
    given = getattr(settings, "OUTBOX_RELAY_STATUS_VALUES", None) or {}
    if not isinstance(given, dict):
        raise SettingError("OUTBOX_RELAY_STATUS_VALUES", 'must be a dict like {"pending": "NEW", "delivered": "SENT", "dead": "FAILED"}')
    for state in given:
        if state not in contract.STATES:
            raise SettingError("OUTBOX_RELAY_STATUS_VALUES", f"unknown state {state!r} (states: pending, delivered, dead)")
    statuses = {**contract.DEFAULT_STATUSES, **given}
    if len({str(v) for v in statuses.values()}) != 3:
        raise SettingError("OUTBOX_RELAY_STATUS_VALUES", "pending, delivered and dead need three different values")
    return statuses
