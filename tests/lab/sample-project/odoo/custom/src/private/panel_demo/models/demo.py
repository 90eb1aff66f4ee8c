"""Models of the demo addon (the stand-in does not import them; they change its hash)."""
