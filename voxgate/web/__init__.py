"""The web dashboard served by ``voxgate serve`` (``voxgate.web.app.setup``).

Modules: ``app`` (routes, start-up, rendering), ``auth`` (passwords, cookie
sessions, CSRF, guards), ``db`` (the dashboard's tables, migration
``0003_web.sql``), ``views`` (customer pages), ``admin_views`` (operator
pages), ``figures`` (pure: simulator, periods, operator analytics),
``charts`` (pure: SVG charts), ``cli`` (``voxgate web create-operator``).
The browser voice client (``voice_client``, ``voice/``) lives here too.
"""
