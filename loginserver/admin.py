"""Login server admin (2FA-protected admin_site): nodes, user records, enrolment tokens."""

from django import forms
from django.conf import settings
from django.contrib import admin, messages

from accounts.admin_site import admin_site
from peers import protocol

from . import services
from .models import EnrolmentToken, Node, ServerKey, UserRecord


class NodeAdmin(admin.ModelAdmin):
    list_display = ("name", "url", "active", "last_report_at", "enrolled_at", "revoked_at")
    list_filter = ("active",)
    search_fields = ("name", "url")
    readonly_fields = ("name", "url", "fingerprint", "enrolled_at", "revoked_at", "last_report_at")
    fields = readonly_fields
    actions = ("revoke",)

    @admin.display(description="key fingerprint")
    def fingerprint(self, obj: Node) -> str:
        return protocol.fingerprint(bytes(obj.sign_key))

    @admin.action(description="Revoke the selected nodes", permissions=("change",))
    def revoke(self, request, queryset):
        for node in queryset.filter(active=True):
            services.revoke_node(name=node.name)
        self.message_user(request, "Revoked.", messages.SUCCESS)

    def has_add_permission(self, request) -> bool:
        return False  # nodes join with an enrolment token


class UserRecordAdmin(admin.ModelAdmin):
    """User records, read-only. A name stays its node's while unlisted (the node's reports
    leave it out); the release action frees it for another node."""

    list_display = ("username", "node", "full_name", "position", "status", "listed", "updated_at")
    list_filter = ("listed", "status", "node")
    search_fields = ("username", "full_name")
    list_select_related = ("node",)
    fields = (
        "username",
        "node",
        "listed",
        "full_name",
        "position",
        "fingerprint",
        "status",
        "last_seen",
        "issued",
        "expires",
    )
    readonly_fields = fields
    actions = ("release",)

    @admin.display(description="key fingerprint")
    def fingerprint(self, obj: UserRecord) -> str:
        return protocol.fingerprint(bytes(obj.sign_key), bytes(obj.box_key))

    @admin.action(
        description="Release the selected usernames (another node may then claim them)",
        permissions=("change",),
    )
    def release(self, request, queryset):
        released, refused = [], []
        for username in queryset.values_list("username", flat=True):
            try:
                services.release_username(username=username)
            except protocol.ProtocolError as error:
                refused.append(error.message)
            else:
                released.append(username)
        if released:
            self.message_user(request, f"Released: {', '.join(released)}.", messages.SUCCESS)
        for message in refused:
            self.message_user(request, f"Not released: {message}.", messages.ERROR)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # change_userrecord runs the release action only: a record's page stays read-only.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # a name is freed by the release action, which keeps its rules


class EnrolmentTokenForm(forms.ModelForm):
    class Meta:
        model = EnrolmentToken
        fields = ("node_name",)

    def clean_node_name(self) -> str:
        name = self.cleaned_data["node_name"]
        try:
            protocol.validate_node_name(name)
        except protocol.ProtocolError:
            raise forms.ValidationError(
                "A node name is 1-63 of a-z 0-9 _ . - (lower case), starting with a letter "
                "or digit, for example 'branch' or 'paris-office'."
            ) from None
        if Node.objects.filter(name=name, active=True).exists():
            raise forms.ValidationError(f"The node {name!r} is enrolled and active.")
        return name


class EnrolmentTokenAdmin(admin.ModelAdmin):
    """Adding a token shows it once; only its hash is stored."""

    form = EnrolmentTokenForm
    list_display = ("node_name", "created_at", "expires_at", "used_at", "used_by")
    fields = ("node_name",)

    def get_readonly_fields(self, request, obj=None):
        return ("node_name",) if obj else ()

    def save_model(self, request, obj, form, change):
        if change:
            return
        row, token = services.create_enrolment_token(node_name=obj.node_name)
        obj.pk = row.pk
        self.message_user(
            request,
            f"Enrolment token for {row.node_name} (shown once, single use): {token} — "
            f"login server key fingerprint: {services.server_fingerprint()}",
            messages.WARNING,
        )


class ServerKeyAdmin(admin.ModelAdmin):
    fields = ("fingerprint", "created_at")
    readonly_fields = fields

    @admin.display(description="login server key fingerprint")
    def fingerprint(self, obj: ServerKey) -> str:
        return protocol.fingerprint(bytes(obj.sign_public))

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


if settings.IS_LOGIN_SERVER:
    admin_site.register(Node, NodeAdmin)
    admin_site.register(UserRecord, UserRecordAdmin)
    admin_site.register(EnrolmentToken, EnrolmentTokenAdmin)
    admin_site.register(ServerKey, ServerKeyAdmin)
