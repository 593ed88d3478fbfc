from django.urls import path

from p2psocial import converters  # noqa: F401  (registers <username:...>)
from peers import views as peer_views

from . import views

app_name = "accounts"
urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("login/code/", views.verify_view, name="verify"),
    path("setup/2fa/", views.enrol_view, name="enrol"),
    path("setup/backup-codes/", views.backup_codes_view, name="backup_codes"),
    path("logout/", views.logout_view, name="logout"),
    path("profile/", views.profile_edit_view, name="profile_edit"),
    path("password/", views.password_change_view, name="password_change"),
    # One URL for every person's picture: this node's people from their profile, another
    # office's from the verified cache (peers.views.picture hands local ones to picture_view).
    path("people/<username:username>/picture", peer_views.picture, name="picture"),
]
