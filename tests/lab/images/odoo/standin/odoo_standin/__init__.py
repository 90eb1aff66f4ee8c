"""Odoo 16.0 stand-in for the lab (answers like Odoo; not Odoo)."""
