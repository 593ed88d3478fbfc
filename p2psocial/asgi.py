"""ASGI entry point: `uvicorn p2psocial.asgi:application`."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2psocial.settings")

application = get_asgi_application()
