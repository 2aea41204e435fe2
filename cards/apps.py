from django.apps import AppConfig


class CardsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "cards"
    verbose_name = "Cards"

    def ready(self) -> None:
        # Audit sits below cards: it learns which cards a citizen holds from this lookup
        # (docs/ARCHITECTURE.md, "Layers"). Imported here: selectors import models, loaded by now.
        from audit.selectors import register_card_holdings
        from cards.selectors import card_cins_held_by

        register_card_holdings(card_cins_held_by)
