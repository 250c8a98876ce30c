"""Shared fixtures: local servers (S3, GCS, Theos) live in tests/support/, one module each."""

pytest_plugins = [
    "tests.support.storage_servers",
    "tests.support.theos_server",
    "tests.support.fault_proxy",
]
