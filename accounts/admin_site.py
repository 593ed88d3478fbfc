"""The admin site for both roles: staff only, with a verified second factor."""

from django_otp.admin import OTPAdminSite


class P2PAdminSite(OTPAdminSite):
    site_header = "p2psocial administration"
    site_title = "p2psocial admin"


admin_site = P2PAdminSite(name="admin")
