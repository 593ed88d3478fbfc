"""Admin for people, their profiles, keys and second-factor devices (on accounts.admin_site)."""

from __future__ import annotations

from axes.admin import AccessAttemptAdmin
from axes.models import AccessAttempt
from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from messaging.sending import rotate_person_keys
from peers.protocol import fingerprint
from peers.queries import username_held_elsewhere

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


def _manageable(request: HttpRequest) -> Q:
    """Whom the admin user may act on (password, second factor, keys, lockouts): a
    superuser anyone; anyone else, people without admin rights, and themselves. Otherwise
    one office administrator could reset another's (or a superuser's) second factor and
    password and log in as them."""
    if request.user.is_superuser:
        return Q()
    return Q(is_superuser=False, is_staff=False) | Q(pk=request.user.pk)


def _may_manage(request: HttpRequest, user: User) -> bool:
    return User.objects.filter(_manageable(request), pk=user.pk).exists()


def _changeable(request: HttpRequest, queryset: QuerySet) -> QuerySet:
    return queryset.filter(_manageable(request))


@admin.action(
    description="Reset second factor (the person enrols again at next login)",
    permissions=("change",),
)
def reset_second_factor(modeladmin, request: HttpRequest, queryset: QuerySet) -> None:
    queryset = _changeable(request, queryset)
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


@admin.action(description="Rotate keys (new signing and encryption keys)", permissions=("change",))
def rotate_keys(modeladmin, request: HttpRequest, queryset: QuerySet) -> None:
    people = list(_changeable(request, queryset))
    resealed = sum(rotate_person_keys(user=user)[1] for user in people)
    modeladmin.message_user(
        request,
        f"New keys for {len(people)} person(s); they are published at the next presence report "
        f"(requested now), and other offices then show a key change. Waiting messages sealed "
        f"again: {resealed}.",
        messages.SUCCESS,
    )


# Only a superuser hands out permissions: an office administrator could otherwise raise
# themselves (or a friend) to superuser, or to any permission.
ESCALATING_FIELDS = ("is_superuser", "groups", "user_permissions")


class PersonCreationForm(UserAdmin.add_form):
    def clean_username(self) -> str:
        username = super().clean_username()
        holder = username_held_elsewhere(username)
        if holder:
            raise forms.ValidationError(
                f"The name {username!r} belongs to someone at the {holder} office: names are "
                "unique across the network. Choose another one.",
                code="username_held_elsewhere",
            )
        return username


class PersonAdmin(UserAdmin):
    add_form = PersonCreationForm
    inlines = (ProfileInline, UserKeysInline)
    actions = (reset_second_factor, rotate_keys)
    list_display = ("username", "full_name", "is_staff", "is_active", "has_2fa", "last_activity")
    readonly_fields = ("last_login", "date_joined", "last_activity")

    @admin.display(description="Full name")
    def full_name(self, user: User) -> str:
        profile = getattr(user, "profile", None)
        return profile.full_name if profile else ""

    @admin.display(description="2FA", boolean=True)
    def has_2fa(self, user: User) -> bool:
        return twofactor.has_second_factor(user)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if request.user.is_superuser:
            return fieldsets
        return [
            (name, {**options, "fields": _without(options["fields"], ESCALATING_FIELDS)})
            for name, options in fieldsets
        ]

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        if request.user.is_superuser or obj is None:
            return readonly
        return (*readonly, "is_staff")

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is not None and not _may_manage(request, obj):
            return False  # their password or second factor would be a way in
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and not _may_manage(request, obj):
            return False
        return super().has_delete_permission(request, obj)

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else ()

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            services.complete_person(user=obj)


def _without(fields: tuple, unwanted: tuple) -> tuple:
    return tuple(field for field in fields if field not in unwanted)


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

    def get_queryset(self, request):
        # Deleting an administrator's devices would leave their account behind the
        # password alone, and the next login enrols whoever typed it.
        manageable = User.objects.filter(_manageable(request)).values("pk")
        return super().get_queryset(request).filter(user__in=manageable)


class LockoutAdmin(AccessAttemptAdmin):
    """Lockouts of the people the admin user may manage only: clearing an administrator's
    lockout would let someone go on guessing their password."""

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        protected = User.objects.exclude(_manageable(request)).values("username")
        return queryset.exclude(username__in=protected)


admin_site.register(User, PersonAdmin)
admin_site.register(TOTPDevice, DeviceAdmin)
admin_site.register(StaticDevice, DeviceAdmin)
admin_site.register(AccessAttempt, LockoutAdmin)
