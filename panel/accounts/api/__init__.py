"""REST API of tenancy: organizations, API tokens, and the scoped base classes the other API packages share."""
