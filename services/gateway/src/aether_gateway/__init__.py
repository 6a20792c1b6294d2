"""Aether gateway: REST and SSE over a PostgreSQL read model of the mission stream."""
