"""Office administrators see attachments' metadata in the admin (view only; never the
key or content), as they see messages'. Frozen names, as in accounts/0003."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

OFFICE_ADMINISTRATORS = "Office administrators"


def grant(apps, schema_editor):
    using = schema_editor.connection.alias
    app_config = apps.get_app_config("messaging")
    app_config.models_module = True  # create_permissions skips an app without one
    try:
        create_permissions(app_config, apps=apps, verbosity=0, using=using)
    finally:
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.using(using).filter(name=OFFICE_ADMINISTRATORS).first()
    if group is not None:
        group.permissions.add(
            Permission.objects.using(using).get(
                content_type__app_label="messaging", codename="view_attachment"
            )
        )


def revoke(apps, schema_editor):
    using = schema_editor.connection.alias
    Group = apps.get_model("auth", "Group")
    group = Group.objects.using(using).filter(name=OFFICE_ADMINISTRATORS).first()
    if group is not None:
        group.permissions.remove(
            *group.permissions.filter(
                content_type__app_label="messaging", codename="view_attachment"
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("messaging", "0004_attachment"),
        ("accounts", "0003_administrator_groups"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
