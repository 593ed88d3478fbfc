"""ASGI entry point: `uvicorn p2psocial.asgi:application`."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2psocial.settings")

application = get_asgi_application()

from django.conf import settings  # noqa: E402 (configured by get_asgi_application)

if settings.IS_LOGIN_SERVER:
    # The node API's hot endpoints (report, directory) skip Django's browser machinery.
    from loginserver.asgi import NodeApi

    application = NodeApi(application)
