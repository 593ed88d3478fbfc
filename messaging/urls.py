from django.urls import path

from p2psocial import converters  # noqa: F401  (registers <username:...>)

from . import group_api, group_views, peer_api, views

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
    path("groups/new/", group_views.new_group, name="group_new"),
    path("groups/<uuid:group_id>/", group_views.group_page, name="group"),
    path(
        "groups/<uuid:group_id>/messages.json",
        group_views.group_messages_json,
        name="group_messages_json",
    ),
    path("groups/<uuid:group_id>/state.json", group_api.group_state_json, name="group_state"),
    path("groups/<uuid:group_id>/read/", group_views.group_mark_read, name="group_mark_read"),
    path("groups/<uuid:group_id>/files/", group_views.group_upload, name="group_upload"),
    path("groups/<uuid:group_id>/change/", group_views.group_change, name="group_change"),
    path(
        "groups/<uuid:group_id>/messages/<int:message_id>/",
        group_views.group_message_detail,
        name="group_message",
    ),
    path(
        "groups/<uuid:group_id>/messages/<int:message_id>/retry/",
        group_views.group_retry,
        name="group_retry",
    ),
    path("files/<uuid:file_id>/", views.file_view, name="file"),
    path("files/<uuid:file_id>/preview/", views.file_preview, name="file_preview"),
    path("api/v1/files/<str:file_id>", peer_api.file_blob, name="peer_file"),
]
