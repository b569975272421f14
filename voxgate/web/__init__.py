"""The web dashboard served by ``voxgate serve`` (``voxgate.web.app.setup``).

Modules, from the top down: ``app`` (routes and start-up only), ``views``
(customer pages), ``account_views`` (two-factor sign-in), ``settings_views``
(the webhook endpoint page, a project's own provider key), ``admin_views``
(operator pages), ``margin_views`` (the operator's margin view),
``spend_view`` (a customer's spend-limit status), ``render`` (templates and their filters, ``render``, the
security headers of every dashboard response), ``auth`` (passwords, cookie
sessions, CSRF, guards, the demo user), ``state`` (``WebState`` under
``app[WEB]``: what the handlers share), ``db`` (the dashboard's tables,
migrations ``0003_web.sql`` and ``0006_web_security.sql``), ``security``
(pure: ``next`` checks, rate limits, password policy, CSV cells, response
headers), ``twofactor`` (pure: TOTP, recovery codes, QR code), ``charts``
(pure: SVG charts), ``receipts`` (pure: a session receipt's verdict
sentence, timeline, units and cost), ``cli`` (``voxgate web
create-operator``). The business figures they show (simulator, periods,
operator analytics) are ``voxgate.models.figures``. The browser voice
client (``voice_client``, ``voice/``) lives here too.
"""
