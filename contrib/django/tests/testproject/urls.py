from django.contrib import admin
from django.urls import path

from outbox_relay.admin import OutboxEventAdmin
from portal.models import PortalEventOutbox

# A second admin site with the portal's own outbox model, for the tests
# that point OUTBOX_RELAY_MODEL at it.
portal_site = admin.AdminSite(name="portal_admin")
portal_site.register(PortalEventOutbox, OutboxEventAdmin)

urlpatterns = [
    path("admin/", admin.site.urls),
    path("portal-admin/", portal_site.urls),
]
