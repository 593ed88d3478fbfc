app_name = "loginserver"
urlpatterns: list = []
