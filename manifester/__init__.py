"""manifester: move image collections from cloud buckets into Theos datasets.

Library first: everything the CLI does is one call away::

    import manifester

    plan = manifester.build("s3://photos/cats", out="manifests/")
    summary = manifester.migrate("s3://photos/cats", dataset="Cats",
                                 manifest_store="s3://photos-manifests/theos/")
    summary = manifester.ingest("s3://photos/incoming", dataset_id="42",
                                manifest_store="s3://photos-manifests/theos/")

    with manifester.TheosClient() as theos:        # THEOS_PROJECT_KEY / THEOS_API_TOKEN
        print(theos.list_datasets())

Heavy modules (cloud SDKs, the server) are imported on first use, so ``import
manifester`` stays cheap and works without any extra installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import (
    AuthError,
    BadRequestError,
    BusyError,
    ConfigError,
    CredentialsError,
    Interrupted,
    LedgerError,
    LockedError,
    ManifesterError,
    MissingExtraError,
    NotFoundError,
    PublishError,
    ShardError,
    SourceError,
    SourceNotFoundError,
    TaskFailedError,
    TheosError,
    TransientError,
    ValidationError,
)

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily by __getattr__ below.
_LAZY: dict[str, str] = {
    "build": "builder",
    "BuildOptions": "builder",
    "Plan": "builder",
    "migrate": "pipeline",
    "ingest": "pipeline",
    "Summary": "pipeline",
    "TheosClient": "theos",
    "Task": "theos",
    "Dataset": "theos",
    "Example": "theos",
    "DatasetClass": "theos",
    "open_storage": "storage",
    "start_server": "server",
}

__all__ = ["__version__", *_LAZY, *errors.__all__]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'manifester' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .builder import BuildOptions, Plan, build
    from .pipeline import Summary, ingest, migrate
    from .server import start_server
    from .storage import open_storage
    from .theos import Dataset, DatasetClass, Example, Task, TheosClient
