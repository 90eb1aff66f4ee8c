{
    "name": "Panel demo",
    "summary": "Private addon of the doodba-panel lab sample project",
    "version": "16.0.1.0.0",
    "license": "LGPL-3",
    "author": "Doodba Panel Lab",
    "depends": ["base"],
    # Installed with base (``odoo -i base``) so that deploys have a private addon to update.
    "auto_install": True,
    "installable": True,
}
