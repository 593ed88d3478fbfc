from django.urls import path

from . import peer_api, views

app_name = "messaging"
urlpatterns = [
    path("api/v1/inbox", peer_api.inbox, name="inbox"),
    path("chat/<str:username>/", views.conversation, name="conversation"),
    path("chat/<str:username>/messages.json", views.messages_json, name="messages_json"),
    path("chat/<str:username>/retry/<int:message_id>/", views.retry, name="retry"),
]
