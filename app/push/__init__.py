"""Web Push: VAPID identity, browser subscriptions, and a queue of pushes sent off the request path."""
