"""Differential check of the git broker's three-way merge against ``git merge-tree``."""
