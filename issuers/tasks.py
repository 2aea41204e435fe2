"""Tasks of the issuers app."""
