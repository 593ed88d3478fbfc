"""Login server administrators may release a reserved username (the admin action on user
records needs change_userrecord; every field of a record stays read-only).

The group and its first permissions come from accounts/migrations/0003; this adds one.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

# Frozen here, as in accounts/migrations/0003: a migration must not import code that changes.
LOGIN_SERVER_ADMINISTRATORS = "Login server administrators"
CODENAME = "change_userrecord"


def _permission(apps, using):
    app_config = apps.get_app_config("loginserver")
    # create_permissions skips an app without a models module; a historical app has none
    app_config.models_module = True
    try:
        create_permissions(app_config, apps=apps, verbosity=0, using=using)
    finally:
        app_config.models_module = None
    Permission = apps.get_model("auth", "Permission")
    return Permission.objects.using(using).get(
        content_type__app_label="loginserver", codename=CODENAME
    )


def grant(apps, schema_editor):
    using = schema_editor.connection.alias
    Group = apps.get_model("auth", "Group")
    group = Group.objects.using(using).filter(name=LOGIN_SERVER_ADMINISTRATORS).first()
    if group is not None:
        group.permissions.add(_permission(apps, using))


def revoke(apps, schema_editor):
    using = schema_editor.connection.alias
    Group = apps.get_model("auth", "Group")
    group = Group.objects.using(using).filter(name=LOGIN_SERVER_ADMINISTRATORS).first()
    if group is not None:
        group.permissions.remove(_permission(apps, using))


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_administrator_groups"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("loginserver", "0002_userrecord_listed"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
