"""A simulated Colab page for tests, benchmarks and the demo; see ``gateway.sim.colab``."""

from gateway.sim.colab import SimColab

__all__ = ["SimColab"]
