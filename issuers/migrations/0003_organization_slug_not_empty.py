# A bank named only with non-Latin letters or emoji got slug "" from slugify(); audit visibility
# matched on that empty slug. Give every such organisation a generated unique slug, then forbid
# empty slugs in the database.

import secrets

from django.db import migrations, models


def fill_empty_slugs(apps, schema_editor):
    Organization = apps.get_model("issuers", "Organization")
    for organization in Organization.objects.filter(slug=""):
        while True:
            slug = f"{organization.kind or 'org'}-{secrets.token_hex(4)}"
            if not Organization.objects.filter(slug=slug).exists():
                break
        organization.slug = slug
        organization.save(update_fields=["slug"])


class Migration(migrations.Migration):
    dependencies = [
        ("issuers", "0002_key_custody"),
    ]

    operations = [
        migrations.RunPython(fill_empty_slugs, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="organization",
            constraint=models.CheckConstraint(
                condition=models.Q(("slug", ""), _negated=True), name="organization_slug_not_empty"
            ),
        ),
    ]
