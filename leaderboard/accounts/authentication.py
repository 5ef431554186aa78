"""DRF authentication by personal API token: ``Authorization: Token <raw token>``."""

from django.utils import timezone
from rest_framework import authentication, exceptions

from leaderboard.accounts.models import ApiToken, token_digest


class ApiTokenAuthentication(authentication.TokenAuthentication):
    """Looks the token up by digest; revoked or unknown tokens are refused with a clear reason."""

    keyword = "Token"

    def authenticate_credentials(self, key: str):
        token = ApiToken.objects.select_related("user").filter(digest=token_digest(key)).first()
        if token is None:
            raise exceptions.AuthenticationFailed("invalid token: no such token")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed("invalid token: this token was revoked")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("invalid token: the account is disabled")
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user, token
