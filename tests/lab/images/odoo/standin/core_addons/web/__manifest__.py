{"name": "Web", "version": "1.0", "depends": ["base"], "installable": True, "auto_install": True}
