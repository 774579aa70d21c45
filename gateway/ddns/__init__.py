"""Keep the home domain pointing at this Pi: detect the public addresses, publish changes.

``detect`` finds the addresses, ``providers`` speak each DNS host's protocol, ``store``
remembers what a provider accepted (and which hosts a provider told us to stop updating),
``updater`` runs the cycle and is the daemon component ``ddns``.
"""
