from django.urls import path

from p2psocial import converters  # noqa: F401  (registers <username:...>)

from . import peer_api, views

app_name = "messaging"
urlpatterns = [
    path("api/v1/inbox", peer_api.inbox, name="inbox"),
    path("chats/", views.home, name="home"),
    path("search/", views.search_view, name="search"),
    path("chat/unread.json", views.unread, name="unread"),
    path("chat/<username:username>/", views.conversation, name="conversation"),
    path("chat/<username:username>/messages.json", views.messages_json, name="messages_json"),
    path("chat/<username:username>/read/", views.mark_read, name="mark_read"),
    path("chat/<username:username>/retry/<int:message_id>/", views.retry, name="retry"),
    path("chat/<username:username>/files/", views.upload, name="upload"),
    path("files/<uuid:file_id>/", views.file_view, name="file"),
    path("files/<uuid:file_id>/preview/", views.file_preview, name="file_preview"),
    path("api/v1/files/<str:file_id>", peer_api.file_blob, name="peer_file"),
]
