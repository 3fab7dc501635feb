# The test portal's table in Django 3.2's form; its indexes are the
# model's own, from outbox_indexes with the same arguments.

from django.db import migrations, models
import django.utils.timezone
import uuid

from outbox_relay.models import outbox_indexes


class Migration(migrations.Migration):
    dependencies = []
    operations = [
        migrations.CreateModel(
            name='PortalEventOutbox',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ('topic', models.CharField(max_length=100)),
                ('body', models.JSONField()),
                ('state', models.CharField(choices=[('NEW', 'New'), ('SENT', 'Sent'), ('FAILED', 'Failed')], default='NEW', max_length=16)),
                ('tries', models.PositiveSmallIntegerField(default=0)),
                ('available_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('error', models.TextField(blank=True, default='')),
                ('created', models.DateTimeField(auto_now_add=True)),
                ('sent_at', models.DateTimeField(blank=True, null=True)),
                ('tenant', models.CharField(blank=True, default='', max_length=40)),
            ],
            options={
                'db_table': 'portal_outbox',
            },
        ),
        *[migrations.AddIndex(model_name='portaleventoutbox', index=index)
          for index in outbox_indexes("portal_outbox", status="state", pending="NEW", dead="FAILED",
                                      next_attempt_at="available_at", created_at="created")],
    ]
