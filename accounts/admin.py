"""Admin for people, their profiles, keys and second-factor devices (on accounts.admin_site)."""

from __future__ import annotations

from axes.admin import AccessAttemptAdmin
from axes.models import AccessAttempt
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from peers.protocol import fingerprint

from . import services, sessions, twofactor
from .admin_site import admin_site
from .models import Profile, User, UserKeys


class ProfileInline(admin.StackedInline):
    model = Profile
    can_delete = False
    fields = ("full_name", "position", "location", "description", "picture", "updated_at")
    readonly_fields = ("updated_at",)


class UserKeysInline(admin.StackedInline):
    """Public fingerprints only: the private parts are never shown, even encrypted."""

    model = UserKeys
    can_delete = False
    fields = ("signing_key_fingerprint", "encryption_key_fingerprint", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Signing key (ed25519) fingerprint")
    def signing_key_fingerprint(self, keys: UserKeys) -> str:
        return fingerprint(bytes(keys.sign_public))

    @admin.display(description="Encryption key (X25519) fingerprint")
    def encryption_key_fingerprint(self, keys: UserKeys) -> str:
        return fingerprint(bytes(keys.box_public))


@admin.action(description="Reset second factor (the person enrols again at next login)")
def reset_second_factor(modeladmin, request: HttpRequest, queryset: QuerySet) -> None:
    for user in queryset:
        twofactor.reset_second_factor(user=user)
        sessions.end_sessions(
            user=user,
            keep_session_key=request.session.session_key if user.pk == request.user.pk else None,
        )
    modeladmin.message_user(
        request,
        f"Second factor reset for {queryset.count()} person(s); they set up an authenticator "
        "app at their next login.",
        messages.SUCCESS,
    )


class PersonAdmin(UserAdmin):
    inlines = (ProfileInline, UserKeysInline)
    actions = (reset_second_factor,)
    list_display = ("username", "full_name", "is_staff", "is_active", "has_2fa", "last_activity")
    readonly_fields = ("last_login", "date_joined", "last_activity")

    @admin.display(description="Full name")
    def full_name(self, user: User) -> str:
        profile = getattr(user, "profile", None)
        return profile.full_name if profile else ""

    @admin.display(description="2FA", boolean=True)
    def has_2fa(self, user: User) -> bool:
        return twofactor.has_second_factor(user)

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else ()

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            services.complete_person(user=obj)


class DeviceAdmin(admin.ModelAdmin):
    """Devices are seen and deleted here, never edited: their secrets are not shown to staff."""

    list_display = ("user", "name", "confirmed", "throttling_failure_count")
    list_filter = ("confirmed",)
    search_fields = ("user__username",)
    fields = (
        "user",
        "name",
        "confirmed",
        "throttling_failure_count",
        "throttling_failure_timestamp",
    )
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


admin_site.register(User, PersonAdmin)
admin_site.register(TOTPDevice, DeviceAdmin)
admin_site.register(StaticDevice, DeviceAdmin)
admin_site.register(AccessAttempt, AccessAttemptAdmin)
