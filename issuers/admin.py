"""Admin of the issuers app."""
