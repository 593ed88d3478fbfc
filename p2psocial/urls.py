"""URLs for both roles; the role decides which apps are reachable."""

from django.conf import settings
from django.urls import include, path

from . import event_views, health

urlpatterns = [
    path("health", health.health, name="health"),
    path("health/live", health.live, name="health_live"),
]

if settings.IS_LOGIN_SERVER:
    urlpatterns += [path("", include("loginserver.urls"))]
else:
    urlpatterns += [
        path("", include("accounts.urls")),
        path("", include("peers.urls")),
        path("", include("messaging.urls")),
        path("events/", event_views.stream, name="events"),
    ]

# The admin requires a verified second factor on both roles (accounts.admin_site).
from accounts.admin_site import admin_site  # noqa: E402

urlpatterns += [path("admin/", admin_site.urls)]

handler404 = "p2psocial.errors.not_found"
