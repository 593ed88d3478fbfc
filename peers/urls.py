from django.urls import path

from . import views

app_name = "peers"
urlpatterns = [
    path("", views.index, name="index"),
    path("users/", views.users, name="users"),
    path("people/<str:username>/", views.profile, name="profile"),
    path("people/<str:username>/verify-keys", views.acknowledge_keys, name="acknowledge_keys"),
]
