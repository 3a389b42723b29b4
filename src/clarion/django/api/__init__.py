"""The REST Hooks API of the webhook app (plain Django views, JSON in and out).

Mounted by :mod:`clarion.django.urls` (``path("webhooks/", include("clarion.django.urls"))``)
under ``api/``; ``api/openapi.json`` describes every route. Authentication is an API key,
``Authorization: Bearer ck_…`` (made on the dashboard, or ``ApiKey.issue(user)``), or a
signed-in session (unsafe methods then need Django's CSRF token).

=======  ====================================  ==============================================
GET      api/hooks                             event types, filter fields, matcher ops
GET      api/subscriptions                     your subscriptions (paged: limit, after)
POST     api/subscriptions                     subscribe (201, the secret shown once)
GET      api/subscriptions/{id}                one subscription
PATCH    api/subscriptions/{id}                change url, match or options
DELETE   api/subscriptions/{id}                unsubscribe (204)
POST     api/subscriptions/{id}/rotate-secret  new secret (``grace_seconds`` optional)
POST     api/subscriptions/{id}/enable         enable again
POST     api/subscriptions/{id}/disable        disable (``reason`` optional)
POST     api/subscriptions/{id}/recover        resend failures since ``since`` (≤ 14 days)
GET      api/subscriptions/{id}/deliveries     deliveries (``status`` filter, paged)
GET      api/deliveries/{id}                   one delivery with its attempts
POST     api/deliveries/{id}/resend            one more attempt now (202)
POST     api/events                            send an event (202; Idempotency-Key)
GET      api/openapi.json                      the OpenAPI 3.1 document (no auth)
=======  ====================================  ==============================================

Errors are JSON ``{"error": …, "errors": {field: [messages]}}``: 400 malformed JSON, 401 no or
bad key, 403 failed CSRF (session callers), 404 missing *or another owner's* object, 405, 413
body over 1 MiB (or an event over ``MAX_PAYLOAD``), 422 validation.
"""
