"""The model tests use the session's tiny bases and offline Hub from tests/conftest.py."""
