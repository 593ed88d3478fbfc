from django.urls import path

from p2psocial import converters  # noqa: F401  (registers <username:...>)

from . import profile_api, views

app_name = "peers"
urlpatterns = [
    path("", views.index, name="index"),
    path("users/", views.users, name="users"),
    path("people/<username:username>/", views.profile, name="profile"),
    path("people/<username:username>/verify-keys", views.acknowledge_keys, name="acknowledge_keys"),
    # <str:>, as for files: the view answers any other name profile_not_found (JSON 404).
    path("api/v1/profiles/<str:username>", profile_api.profile, name="peer_profile"),
    path(
        "api/v1/profiles/<str:username>/picture",
        profile_api.picture,
        name="peer_profile_picture",
    ),
]
