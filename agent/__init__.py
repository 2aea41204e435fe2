"""The client relay: moves APDU scripts between the platform and a card it cannot read or change.

The agent holds nothing secret about the card: it forwards secured C-APDUs (C-MAC, C-DEC) and the
card's secured responses (R-MAC, R-ENC) in batches (DESIGN.md §6).
"""
