"""Models of the deployments app (built by a later issue)."""
