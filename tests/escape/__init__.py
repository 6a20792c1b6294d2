"""Escape attempts: each is refused or contained."""
