"""The whole-system fixtures of ``test_mission_flow`` (a scripted model server, a fresh
database, a sample repository, the running stack), shared with every end-to-end test here."""

from tests.e2e.test_mission_flow import fresh_database, model_server, repo, running

__all__ = ["fresh_database", "model_server", "repo", "running"]
