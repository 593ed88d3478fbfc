"""A username stays reserved to its node when a report leaves it out: the record is kept,
unlisted. Existing records are all listed and keep their owners."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("loginserver", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="userrecord",
            name="listed",
            field=models.BooleanField(
                default=True,
                help_text="in the node's latest report and the directory; if not, the name "
                "stays reserved to the node",
            ),
        ),
    ]
