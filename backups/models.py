"""Models of the backups app (built by a later issue)."""
