from django.core.management.base import BaseCommand, CommandError

from outbox_relay.conf import SettingError, get_outbox


class Command(BaseCommand):
    help = ("Print the relay's settings for the outbox model: RELAY_OUTBOX_TABLE, RELAY_COLUMNS and "
            "RELAY_STATUS_VALUES, one NAME=value per line, for the relay's environment.")
    requires_system_checks = []

    def handle(self, *args, **options):
        try:
            outbox = get_outbox()
        except SettingError as e:
            raise CommandError(str(e)) from None
        for line in outbox.relay_env():
            self.stdout.write(line)
