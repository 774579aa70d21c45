"""``colab-gateway doctor``: what a user runs first when something is wrong.

Each check is a small function that looks at one thing (the config, Chromium, the
endpoint, the DDNS record, …) and returns a ``Finding``: ok, warn, fail or skip, what it
saw, and what to do. The runner turns an exception into a fail line naming the check, so
one broken check never hides the others. This is a command, not a component: it may
import the components' public helpers, and no component imports it.
"""
