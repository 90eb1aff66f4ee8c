{"name": "Base", "version": "1.3", "depends": [], "installable": True, "auto_install": False}
