"""The web dashboard served by ``voxgate serve`` (``voxgate.web.app.setup``).

Modules: ``app`` (routes, start-up, rendering, response headers), ``auth``
(passwords, cookie sessions, CSRF, guards), ``db`` (the dashboard's tables,
migrations ``0003_web.sql`` and ``0006_web_security.sql``), ``views``
(customer pages), ``account_views`` (two-factor sign-in), ``admin_views``
(operator pages), ``security`` (pure: ``next`` checks, rate limits,
password policy, CSV cells, response headers), ``twofactor`` (pure: TOTP,
recovery codes, QR code), ``figures`` (pure: simulator, periods, operator
analytics), ``charts`` (pure: SVG charts), ``receipts`` (pure: a session
receipt's verdict sentence, timeline, units and cost), ``cli`` (``voxgate web
create-operator``). The browser voice client (``voice_client``, ``voice/``)
lives here too.
"""
