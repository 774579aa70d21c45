"""The ``metrics`` component: Prometheus metrics of the whole chain, read from the State."""
