"""What the Colab VM itself is doing: its accelerator, memory, disk and uptime (issue 27)."""
