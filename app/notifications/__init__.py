"""Stored notifications: an inbox per (tenant, user), kept in sync across tabs through `user:<id>`."""
