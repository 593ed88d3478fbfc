"""The administrator groups of accounts.roles, with their permissions.

The permission lists are frozen here (a later change to a role is a new migration). On a
fresh database the permissions do not exist yet during migrate (post_migrate makes them
after every migration has run), so this migration makes them first, the same way.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

# Names as in accounts.roles, frozen: a migration must not import code that may change.
OFFICE_ADMINISTRATORS = "Office administrators"
LOGIN_SERVER_ADMINISTRATORS = "Login server administrators"

GROUP_PERMISSIONS = {
    OFFICE_ADMINISTRATORS: {
        # people: create, edit, deactivate, reset the second factor, rotate keys
        "accounts": [
            "add_user",
            "change_user",
            "view_user",
            "change_profile",
            "view_profile",
            "view_userkeys",
        ],
        # second-factor devices and lockouts: seen and removed, never edited
        "otp_totp": ["view_totpdevice", "delete_totpdevice"],
        "otp_static": ["view_staticdevice", "delete_staticdevice"],
        "axes": ["view_accessattempt", "delete_accessattempt"],
        # delivery state, metadata only
        "messaging": [
            "view_message",
            "view_outbox",
            "view_destinationstate",
            "view_receivedenvelope",
        ],
        "peers": [
            "view_nodeidentity",
            "view_peernode",
            "view_directoryuser",
            "view_directorysync",
        ],
    },
    LOGIN_SERVER_ADMINISTRATORS: {
        # change_node only runs the revoke action: every field of a node is read-only
        "loginserver": [
            "view_node",
            "change_node",
            "add_enrolmenttoken",
            "view_enrolmenttoken",
            "view_userrecord",
            "view_serverkey",
        ],
    },
}


def _create_missing_permissions(apps, using):
    for app_label in {label for perms in GROUP_PERMISSIONS.values() for label in perms}:
        app_config = apps.get_app_config(app_label)
        # create_permissions skips an app without a models module; a historical app has none
        app_config.models_module = True
        try:
            create_permissions(app_config, apps=apps, verbosity=0, using=using)
        finally:
            app_config.models_module = None


def create_groups(apps, schema_editor):
    using = schema_editor.connection.alias
    _create_missing_permissions(apps, using)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, by_app in GROUP_PERMISSIONS.items():
        group, _ = Group.objects.using(using).get_or_create(name=name)
        permissions = [
            Permission.objects.using(using).get(
                content_type__app_label=app_label, codename=codename
            )
            for app_label, codenames in by_app.items()
            for codename in codenames
        ]
        group.permissions.set(permissions)


def delete_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(
        name__in=list(GROUP_PERMISSIONS)
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_username_protocol_characters"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("otp_totp", "0003_add_timestamps"),
        ("otp_static", "0003_add_timestamps"),
        ("axes", "0010_accessattemptexpiration"),
        ("messaging", "0001_initial"),
        ("peers", "0003_directorysync_generated"),
        ("loginserver", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_groups, delete_groups)]
