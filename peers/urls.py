from django.urls import path

from p2psocial import converters  # noqa: F401  (registers <username:...>)

from . import views

app_name = "peers"
urlpatterns = [
    path("", views.index, name="index"),
    path("users/", views.users, name="users"),
    path("people/<username:username>/", views.profile, name="profile"),
    path("people/<username:username>/verify-keys", views.acknowledge_keys, name="acknowledge_keys"),
]
