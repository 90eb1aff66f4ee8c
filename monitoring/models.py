"""Models of the monitoring app (built by a later issue)."""
