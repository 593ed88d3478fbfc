from django.conf import settings
from django.http import HttpRequest


def site(request: HttpRequest) -> dict:
    return {"ROLE": settings.ROLE, "NODE_NAME": settings.NODE_NAME}
