from django.apps import AppConfig


class OutboxRelayConfig(AppConfig):
    name = "outbox_relay"
    verbose_name = "Outbox relay"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system check)
