"""The tmux session that stays connected into Colab, and the commands around it."""
