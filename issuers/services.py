"""Services of the issuers app."""
