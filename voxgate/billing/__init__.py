"""Billing: Stripe subscriptions, usage settlement, alerts and emails.

- ``stripe_api``: the Stripe adapter (the only module that talks to Stripe).
- ``catalog_sync``: ``voxgate billing sync`` (products, prices, meter).
- ``events``: Stripe webhook events → account state (order-independent).
- ``settlement``: the settlement outbox → meter events or invoice items.
- ``notify``: quota alerts, emails, customer webhooks, their outbox worker.
- ``migrate``: ``voxgate billing migrate-plans``.
- ``db``: billing's tables (``migrations/0002_billing.sql``).
- ``service``: routes, ``app[BILLING]`` and the background workers.
- ``cli``: the ``voxgate billing`` commands.

Going live: ``docs/billing.md``.
"""
