"""Screens of the watch app: the runs list, one run, a step's diff, restore, metrics."""
