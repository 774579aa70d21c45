"""Notifications: a person hears when a person is needed (docs/notifications.md)."""
