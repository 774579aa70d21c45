"""The healer: the one component that decides, from the facts in the State, what the others
should do (gateway/healer/component.py)."""
