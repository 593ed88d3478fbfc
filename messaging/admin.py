"""Messages and the outbox in the admin: metadata only, never text or ciphertext."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.admin_site import admin_site
from accounts.roles import OFFICE_ADMINISTRATORS

from . import sending
from .models import Attachment, DestinationState, Message, Outbox, ReceivedEnvelope


@admin.action(description="Retry failed deliveries", permissions=("retry",))
def retry_failed_deliveries(modeladmin, request: HttpRequest, queryset: QuerySet) -> None:
    if queryset.model is Outbox:
        ids = [i for i in queryset.values_list("message_id", flat=True) if i]
    else:
        ids = list(queryset.values_list("id", flat=True))
    count = sending.retry_failed_messages(ids)
    modeladmin.message_user(request, f"{count} failed message(s) queued again.", messages.SUCCESS)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_retry_permission(self, request: HttpRequest) -> bool:
        """Sending again is a write: office administrators and superusers, not everyone
        who may look at deliveries."""
        user = request.user
        return user.is_superuser or user.groups.filter(name=OFFICE_ADMINISTRATORS).exists()


@admin.register(Message, site=admin_site)
class MessageAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "envelope_id",
        "direction",
        "sender_username",
        "recipient_username",
        "status",
        "stored_at",
        "delivered_at",
        "read_at",
        "error",
    )
    list_filter = ("status", "direction", "kind")
    search_fields = ("envelope_id", "sender_username", "recipient_username")
    fields = (
        "envelope_id",
        "kind",
        "owner",
        "direction",
        "sender_username",
        "recipient_username",
        "created_ms",
        "status",
        "stored_at",
        "delivered_at",
        "read_at",
        "error",
    )
    readonly_fields = fields
    actions = (retry_failed_deliveries,)
    list_select_related = ()
    show_full_result_count = False


@admin.register(Outbox, site=admin_site)
class OutboxAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "envelope_id",
        "kind",
        "destination",
        "attempts",
        "queued_at",
        "next_attempt_at",
        "failed_at",
        "last_error",
    )
    list_filter = ("destination", "kind")
    search_fields = ("envelope_id", "destination")
    fields = (
        "envelope_id",
        "kind",
        "destination",
        "message",
        "attempts",
        "queued_at",
        "next_attempt_at",
        "failed_at",
        "last_error",
    )
    readonly_fields = fields
    actions = (retry_failed_deliveries,)


@admin.register(DestinationState, site=admin_site)
class DestinationStateAdmin(ReadOnlyAdmin):
    list_display = (
        "node",
        "consecutive_failures",
        "next_attempt_at",
        "last_success_at",
        "last_error",
    )


@admin.register(ReceivedEnvelope, site=admin_site)
class ReceivedEnvelopeAdmin(ReadOnlyAdmin):
    list_display = ("envelope_id", "kind", "sender", "sender_node", "stored_at")
    search_fields = ("envelope_id", "sender")
    list_filter = ("kind", "sender_node")


@admin.register(Attachment, site=admin_site)
class AttachmentAdmin(ReadOnlyAdmin):
    """A file's delivery metadata: type, size, state. Never its key, preview or content,
    nor its name or plaintext hash: a name says what a document is, and a hash confirms
    that a known document was sent (office IT sees no message text either)."""

    list_display = ("file_id", "mime", "size", "state", "node", "message", "error", "stored_at")
    list_filter = ("state", "kind", "node")
    search_fields = ("file_id", "node")
    fields = (
        "file_id",
        "message",
        "node",
        "mime",
        "kind",
        "size",
        "state",
        "error",
        "attempts",
        "next_attempt_at",
        "stored_at",
    )
    readonly_fields = fields
    list_select_related = ("message",)
    show_full_result_count = False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # the row names a file in FILES_DIR: removing it would orphan the file
