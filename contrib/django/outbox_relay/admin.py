"""The outbox in the Django admin: filters by status and type, search by
event id, the pending and dead figures at the top, and the actions that
send dead events again or replay delivered ones."""

import json

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, DurationField, ExpressionWrapper, Min
from django.db.models.functions import Now
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .conf import SettingError, get_outbox, get_outbox_model
from .requeue import requeue

# The columns of the list, by role, in this order.
LIST_ROLES = ("event_id", "event_type", "status", "attempts", "created_at", "next_attempt_at", "delivered_at", "last_error")


class OutboxEventAdmin(admin.ModelAdmin):
    """A ModelAdmin for whichever model OUTBOX_RELAY_MODEL names; it finds
    its fields through the role mapping. Events are read-only here: the
    application writes them, the relay updates them, the operator sends
    them again."""

    change_list_template = "admin/outbox_relay/change_list.html"
    actions = ["send_again", "replay"]
    list_per_page = 50
    search_help_text = _("Search by event id")

    def get_list_display(self, request):
        outbox = get_outbox()
        return [outbox.name(r) if r != "last_error" else "last_error_short" for r in LIST_ROLES]

    def get_list_filter(self, request):
        outbox = get_outbox()
        return [outbox.name("status"), outbox.name("event_type")]

    def get_search_fields(self, request):
        return ["=" + get_outbox().name("event_id")]

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        field = get_outbox().fields["event_id"]
        try:
            value = field.to_python(term)
        except ValidationError:
            return queryset.none(), False  # not an event id: nothing matches
        return queryset.filter(**{field.name: value}), False

    def get_ordering(self, request):
        return ["-" + get_outbox().name("created_at")]

    def get_fields(self, request, obj=None):
        """The fields that play roles, in the roles' order, the payload
        pretty-printed; then the model's other fields."""
        outbox = get_outbox()
        names = []
        for role in outbox.roles():
            name = "payload_pretty" if role == "payload" else outbox.name(role)
            if name not in names:
                names.append(name)
        played = {f.name for f in outbox.fields.values()}
        return names + [f.name for f in self.model._meta.concrete_fields if f.name not in played]

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    def has_add_permission(self, request):
        return False

    @admin.display(description=_("last error"))
    def last_error_short(self, obj):
        text = getattr(obj, get_outbox().name("last_error")) or ""
        return text if len(text) <= 80 else text[:79] + "…"

    @admin.display(description=_("payload"))
    def payload_pretty(self, obj):
        value = getattr(obj, get_outbox().name("payload"))
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return format_html('<pre class="outbox-payload">{}</pre>', value)
        return format_html('<pre class="outbox-payload">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False))

    @admin.action(description=_("Send again (dead events)"), permissions=["change"])
    def send_again(self, request, queryset):
        self._requeue(request, queryset, "dead", "%(count)d dead event moved back to pending: the relay sends it again.",
                      "%(count)d dead events moved back to pending: the relay sends them again.")

    @admin.action(description=_("Replay (delivered events)"), permissions=["change"])
    def replay(self, request, queryset):
        self._requeue(request, queryset, "delivered", "%(count)d delivered event moved back to pending: the relay sends it again.",
                      "%(count)d delivered events moved back to pending: the relay sends them again.")

    def _requeue(self, request, queryset, state, singular, plural):
        selected = queryset.count()
        moved = requeue(queryset, state)
        self.message_user(request, ngettext(singular, plural, moved) % {"count": moved},
                          messages.SUCCESS if moved else messages.WARNING)
        if selected > moved:
            left = selected - moved
            self.message_user(request, ngettext(
                "%(count)d selected event was not %(state)s and was left alone.",
                "%(count)d selected events were not %(state)s and were left alone.", left) % {"count": left, "state": state},
                messages.WARNING)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "outbox_summary": self.summary()}
        return super().changelist_view(request, extra_context=extra_context)

    def summary(self):
        """The figures shown above the list: pending rows, the age of the
        oldest one (by the database's clock), dead rows."""
        outbox = get_outbox()
        rows = self.model._default_manager.all()
        status, created = outbox.name("status"), outbox.name("created_at")
        pending = rows.filter(**{status: outbox.statuses["pending"]}).aggregate(
            count=Count("pk"),
            age=ExpressionWrapper(Now() - Min(created), output_field=DurationField()),
        )
        dead = rows.filter(**{status: outbox.statuses["dead"]}).count()
        return {"pending": pending["count"], "oldest_pending_age": format_age(pending["age"]), "dead": dead,
                "dead_value": outbox.statuses["dead"], "status_field": status}


def format_age(age):
    """A duration as an operator reads it: "45 s", "3 min 12 s", "2 h 5 min",
    "3 d 4 h"; "" for none."""
    if age is None:
        return ""
    seconds = max(0, int(age.total_seconds()))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if seconds >= size:
            rest = (seconds % size) // sub_size
            return f"{seconds // size} {unit}" + (f" {rest} {sub}" if rest else "")
    return f"{seconds} s"


def register(site=admin.site):
    """Register OutboxEventAdmin for the outbox model, unless the model
    already has a ModelAdmin on site."""
    try:
        model = get_outbox_model()
    except SettingError:
        return  # the system check names the setting
    if not site.is_registered(model):
        site.register(model, OutboxEventAdmin)


register()
