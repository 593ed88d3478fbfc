"""Node admin (2FA-protected admin_site): this node's identity and the directory cache."""

from django.conf import settings
from django.contrib import admin

from accounts.admin_site import admin_site

from . import protocol
from .models import DirectorySync, DirectoryUser, NodeIdentity, PeerNode


class ReadOnlyAdmin(admin.ModelAdmin):
    """The directory is written by the login server's signed answers only."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class NodeIdentityAdmin(ReadOnlyAdmin):
    fields = ("name", "public_url", "fingerprint", "login_server_url", "login_fingerprint")
    readonly_fields = fields

    @admin.display(description="node key fingerprint")
    def fingerprint(self, obj: NodeIdentity) -> str:
        return protocol.fingerprint(bytes(obj.sign_public))

    @admin.display(description="pinned login server key fingerprint")
    def login_fingerprint(self, obj: NodeIdentity) -> str:
        return protocol.fingerprint(bytes(obj.login_server_key))


class PeerNodeAdmin(ReadOnlyAdmin):
    list_display = ("name", "url", "active", "online", "updated_at")
    list_filter = ("active", "online")
    fields = ("name", "url", "fingerprint", "active", "online", "updated_at")
    readonly_fields = fields

    @admin.display(description="key fingerprint")
    def fingerprint(self, obj: PeerNode) -> str:
        return protocol.fingerprint(bytes(obj.sign_key))


class DirectoryUserAdmin(ReadOnlyAdmin):
    list_display = ("username", "full_name", "node", "status", "last_seen", "keys_changed_at")
    list_filter = ("status", "node")
    list_select_related = ("node",)
    search_fields = ("username", "full_name")
    fields = (
        "username",
        "full_name",
        "position",
        "node",
        "fingerprint",
        "status",
        "last_seen",
        "keys_changed_at",
        "listed",
    )
    readonly_fields = fields

    @admin.display(description="key fingerprint")
    def fingerprint(self, obj: DirectoryUser) -> str:
        return protocol.fingerprint(bytes(obj.sign_key), bytes(obj.box_key))


class DirectorySyncAdmin(ReadOnlyAdmin):
    list_display = ("last_success_at", "last_attempt_at", "last_error", "refused")
    fields = ("last_success_at", "last_attempt_at", "last_error", "refused")
    readonly_fields = fields

    @admin.display(description="names refused by the login server (held by another node)")
    def refused(self, obj: DirectorySync) -> str:
        names = [entry.get("username", "?") for entry in obj.refused_usernames or []]
        return ", ".join(names) or "none"


if not settings.IS_LOGIN_SERVER:
    admin_site.register(NodeIdentity, NodeIdentityAdmin)
    admin_site.register(PeerNode, PeerNodeAdmin)
    admin_site.register(DirectoryUser, DirectoryUserAdmin)
    admin_site.register(DirectorySync, DirectorySyncAdmin)
