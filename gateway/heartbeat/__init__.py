"""The ``heartbeat`` component: healthchecks.io / Uptime Kuma pings of the whole chain."""
