import importlib

from django.db import migrations

# LegacyOutbox is AbstractOutboxEvent on a table Django does not manage:
# its fields are those the app's initial migration gives OutboxEvent.
app_initial = importlib.import_module("outbox_relay.migrations.0001_initial")


class Migration(migrations.Migration):

    dependencies = [
        ('portal', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='LegacyOutbox',
            fields=app_initial.Migration.operations[0].fields,
            options={
                'verbose_name': 'outbox event',
                'verbose_name_plural': 'outbox events',
                'db_table': 'legacy_outbox',
                'abstract': False,
                'managed': False,
            },
        ),
    ]
