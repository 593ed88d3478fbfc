from django.apps import AppConfig


class LoginserverConfig(AppConfig):
    name = "loginserver"
