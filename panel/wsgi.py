"""WSGI entry point (management tools only; the panel is served over ASGI)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")
application = get_wsgi_application()
