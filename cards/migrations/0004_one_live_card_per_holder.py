# One card per citizen in the database: a holder has at most one card that is not TERMINATED.
# Before the constraint, the API could issue a second card to the same holder; such duplicates
# keep the holder on their oldest live card and the newer ones lose the holder (the agency
# reassigns or terminates them). The detached CINs are printed.

from django.conf import settings
from django.db import migrations, models


def detach_duplicate_holders(apps, schema_editor):
    Card = apps.get_model("cards", "Card")
    live = Card.objects.filter(holder__isnull=False).exclude(lifecycle="TERMINATED").order_by("created_at", "pk")
    seen: set[int] = set()
    detached: list[str] = []
    for card in live:
        if card.holder_id in seen:
            detached.append(card.cin)
            card.holder = None
            card.save(update_fields=["holder"])
        else:
            seen.add(card.holder_id)
    if detached:
        print(f"\n  cards: a holder had several live cards; holder removed from {', '.join(detached)}")  # noqa: T201


class Migration(migrations.Migration):
    dependencies = [
        ("cards", "0003_card_packages"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(detach_duplicate_holders, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="card",
            constraint=models.UniqueConstraint(
                condition=models.Q(("holder__isnull", False), models.Q(("lifecycle", "TERMINATED"), _negated=True)),
                fields=("holder",),
                name="one_live_card_per_holder",
            ),
        ),
    ]
