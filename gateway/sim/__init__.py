"""The simulated Colab: a notebook page and a VM on this machine, for the demo and tests."""
