from django.urls import path

from . import api

app_name = "loginserver"
urlpatterns = [
    path("api/v1/enrol", api.enrol, name="enrol"),
    path("api/v1/report", api.report, name="report"),
    path("api/v1/rotate-key", api.rotate_key, name="rotate_key"),
    path("api/v1/directory", api.directory_view, name="directory"),
]
