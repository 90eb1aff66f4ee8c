"""REST API of the inventory: servers, projects, environments."""
