"""Escape attempts: each asserts that Aether refuses or contains it."""
