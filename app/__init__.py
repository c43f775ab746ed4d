"""Forge Factory real-time service."""
