"""The card's command handlers, one module per command family (the dispatch table is in :mod:`cardsim.card`).

Each handler takes the :class:`~cardsim.card.Card` and the parsed command and returns the
response APDU, raising :class:`cardsim.handlers.common._Reply` for a bare status word.
"""
