"""Models of the issuers app."""
