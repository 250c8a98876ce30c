"""Fuzz the local Theos-compatible server's HTTP API with hypothesis.

Random methods, paths (the real routes with random ids, traversal attempts, unicode,
wrong project keys), tokens (right, wrong, missing, malformed), and bodies (form
fields with random values, JSON of any shape, raw bytes, wrong content types).

Invariants, for every request:

* never a 5xx, and every ``/v1/`` answer is a JSON body;
* a refused request (4xx) writes nothing: the server's SQLite state (datasets,
  classes, examples, labels; not the tasks log) and its media folder are identical
  before and after.

Bounded (a fixed number of examples, no shrinking deadline) so it runs in well under
30 s on two cores.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from manifester.server import RunningServer, start_server
from tests.support.theos_server import StaticServer, make_image

EXAMPLES = 500

FIELD_NAMES = [
    "name",
    "color",
    "with_text",
    "manifest_url",
    "db_ids",
    "labels",
    "split",
    "page",
    "external_id",
    "class_id",
    "x",
    "",
    "id",
    "task_id",
]


class World:
    def __init__(self, server: RunningServer, web: StaticServer) -> None:
        self.server = server
        self.web = web
        self.http = httpx.Client(timeout=20)
        self.dataset_id = 0
        self.ensure_dataset()

    @property
    def base(self) -> str:
        return f"{self.server.url}/v1/project/{self.server.project_key}/datasets"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.server.token}"}

    def ensure_dataset(self) -> None:
        """A dataset with two classes and two examples (one with an external id holding '/')."""
        if (
            self.dataset_id
            and self.http.get(
                f"{self.base}/{self.dataset_id}/", headers=self.auth
            ).status_code
            == 200
        ):
            return
        ds = self.http.post(
            f"{self.base}/create/", data={"name": "Fuzz"}, headers=self.auth
        ).json()
        self.dataset_id = int(ds["id"])
        for name, color in (("car", "#FF0000"), ("plate", "#00FF00")):
            self.http.post(
                f"{self.base}/{self.dataset_id}/classes/create/",
                data={"name": name, "color": color},
                headers=self.auth,
            )
        img = self.web.write("img/a.png", make_image(40, 30))
        manifest = self.web.write_json(
            f"m/{self.dataset_id}.json",
            [
                {"url": img, "split": "train", "external_id": "a/b/c"},
                {"url": img, "split": "test", "external_id": "plain"},
            ],
        )
        task = self.http.post(
            f"{self.base}/{self.dataset_id}/upload/",
            data={"manifest_url": manifest},
            headers=self.auth,
        ).json()
        self.wait_idle()
        assert task["task_id"]

    def wait_idle(self) -> None:
        """Wait until no task is running (tasks change the state on their own)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            conn = sqlite3.connect(
                f"file:{self.server.data_dir / 'theos.sqlite'}?mode=ro", uri=True
            )
            try:
                cols = [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]
                col = "state" if "state" in cols else cols[1]
                running = conn.execute(
                    f"SELECT count(*) FROM tasks WHERE {col} IN ('PENDING', 'STARTED', 'PROGRESS')"
                ).fetchone()[0]
            finally:
                conn.close()
            if not running:
                return
            time.sleep(0.02)
        pytest.fail("a task never finished")

    def snapshot(self) -> Any:
        """Everything a request could write, except the tasks log."""
        conn = sqlite3.connect(
            f"file:{self.server.data_dir / 'theos.sqlite'}?mode=ro", uri=True
        )
        try:
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
                )
            ]
            state = {
                t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"').fetchall()))
                for t in tables
                if t not in ("tasks", "sqlite_sequence")
            }
        finally:
            conn.close()
        media = sorted(
            p.name
            for p in self.server.data_dir.rglob("*")
            if p.is_file() and "sqlite" not in p.name
        )
        return state, media


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = start_server(tmp_path_factory.mktemp("fuzz-theos"), download_timeout=3.0)
    web = StaticServer(tmp_path_factory.mktemp("fuzz-web"))
    w = World(server, web)
    yield w
    w.http.close()
    web.stop()
    server.stop()


# ------------------------------------------------------------------------------ strategies

nasty_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "..",
            "../..",
            "../../etc/passwd",
            "%2e%2e%2f",
            "a/../../b",
            "\x00",
            "null",
            "-1",
            "99999999999999999999",
            "1e9",
            " 1",
            "#FF00GG",
            "true",
            "[]",
            "{}",
            "<script>",
            "ftp://x/y",
            "file:///etc/passwd",
            "http://127.0.0.1:1/x",
            "é/ü",
            "\ud7ff",
        ]
    ),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)

segment = st.one_of(
    st.integers(min_value=-5, max_value=10).map(str),
    st.sampled_from(
        ["{ds}", "{ds}", "{ds}", "0", "x", "..", "%2e%2e", "a%2Fb", "%00", "1.5", "٣"]
    ),
)

ROUTES = [
    "",
    "create/",
    "{id}/",
    "{id}/delete/",
    "{id}/upload/",
    "{id}/upload/stop/",
    "{id}/classes/create/",
    "{id}/classes/{id2}/edit/",
    "{id}/classes/delete/",
    "{id}/classes/merge/",
    "{id}/examples/",
    "{id}/examples/{id2}/",
    "{id}/examples/external/{ext}/",
    "{id}/examples/{id2}/labels/set/",
    "{id}/examples/external/{ext}/labels/set/",
    "{id}/examples/{id2}/skip/",
    "{id}/examples/external/{ext}/skip/",
    "{id}/nope/",
]


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    route = draw(st.sampled_from(ROUTES))
    ds = st.sampled_from(["{ds}"] * 6) | segment
    path = route.format(
        id=draw(ds),
        id2=draw(st.sampled_from(["1", "2", "1", "2"]) | segment),
        ext=draw(
            st.sampled_from(
                [
                    "plain",
                    "a/b/c",
                    "a%2Fb%2Fc",
                    "../../x",
                    "..%2F..%2Fx",
                    "nope",
                    "%E2%82%AC",
                ]
            )
            | st.text(
                alphabet=st.characters(blacklist_categories=("Cs", "Cc")),
                min_size=1,
                max_size=12,
            ).map(lambda t: quote(t, safe=""))
        ),
    )
    prefix = draw(
        st.sampled_from(["project"] * 8 + ["other", "tasks", "media", "root"])
    )
    token = draw(
        st.sampled_from(["good"] * 12 + ["wrong", "missing", "bearer", "empty", "long"])
    )
    # mostly the method the route expects (GET for reads, POST for writes), sometimes another
    expected = (
        "GET"
        if route
        in ("", "{id}/", "{id}/examples/{id2}/", "{id}/examples/external/{ext}/")
        else "POST"
    )
    method = draw(
        st.sampled_from([expected] * 6 + ["GET", "POST", "PUT", "DELETE", "PATCH"])
    )
    body_kind = draw(
        st.sampled_from(
            ["form", "form", "json", "json-any", "raw", "none", "multipart", "query"]
        )
    )
    fields = draw(st.dictionaries(st.sampled_from(FIELD_NAMES), nasty_text, max_size=4))
    if "labels" in fields and draw(st.booleans()):
        fields["labels"] = json.dumps(
            draw(
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "class_id": st.integers(-2, 3),
                            "x": st.integers(-5, 60),
                            "y": st.integers(-5, 60),
                            "width": st.integers(-1, 60),
                            "height": st.integers(-1, 60),
                        },
                        optional={"text": st.text(max_size=5), "extra": st.none()},
                    ),
                    max_size=3,
                )
            )
        )
    any_json = draw(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda c: (
                st.lists(c, max_size=3)
                | st.dictionaries(st.text(max_size=5), c, max_size=3)
            ),
            max_leaves=6,
        )
    )
    raw = draw(st.binary(max_size=64))
    return {
        "route": route,
        "path": path,
        "prefix": prefix,
        "token": token,
        "method": method,
        "body_kind": body_kind,
        "fields": fields,
        "any_json": any_json,
        "raw": raw,
    }


def _send(w: World, r: dict[str, Any]) -> httpx.Response:
    path = r["path"].replace("{ds}", str(w.dataset_id))
    if r["prefix"] == "project":
        url = f"{w.base}/{path}"
    elif r["prefix"] == "other":
        url = f"{w.server.url}/v1/project/not-{w.server.project_key}/datasets/{path}"
    elif r["prefix"] == "tasks":
        url = f"{w.server.url}/v1/tasks/{path}"
    elif r["prefix"] == "media":
        url = f"{w.server.url}/media/{path}"
    else:
        url = f"{w.server.url}/{path}"
    headers = {
        "good": w.auth,
        "wrong": {"Authorization": "Token wrong"},
        "missing": {},
        "bearer": {"Authorization": f"Bearer {w.server.token}"},
        "empty": {"Authorization": "Token"},
        "long": {"Authorization": "Token " + "x" * 5000},
    }[r["token"]]
    kind, fields = r["body_kind"], r["fields"]
    kw: dict[str, Any] = {}
    if kind == "form":
        kw["data"] = fields
    elif kind == "json":
        kw["json"] = fields
    elif kind == "json-any":
        kw["json"] = r["any_json"]
    elif kind == "raw":
        kw["content"] = r["raw"]
        headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    elif kind == "multipart":
        kw["files"] = {k or "f": (None, v) for k, v in fields.items()} or {
            "f": (None, "")
        }
    elif kind == "query":
        kw["params"] = fields
    try:
        return w.http.request(r["method"], httpx.URL(url), headers=headers, **kw)
    except (httpx.InvalidURL, httpx.LocalProtocolError):
        reject()  # the client itself refuses to send it: nothing to learn about the server
        raise AssertionError("unreachable")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(req=requests())
def test_fuzzed_requests_never_500_and_refusals_write_nothing(
    world: World, req: dict[str, Any]
) -> None:
    world.ensure_dataset()
    world.wait_idle()
    before = world.snapshot()
    response = _send(world, req)
    event(f"HTTP {response.status_code}")
    assert response.status_code < 500, (req, response.status_code, response.text[:500])
    url_path = response.request.url.path
    if url_path.startswith("/v1/"):
        try:
            response.json()
        except ValueError:
            pytest.fail(
                f"non-JSON answer {response.status_code} for {req}: {response.text[:300]}"
            )
    if response.status_code >= 400:
        world.wait_idle()
        assert world.snapshot() == before, (
            f"refused request {req} -> {response.status_code} changed the state"
        )


def test_oversized_body_is_refused_with_413_and_writes_nothing(world: World) -> None:
    world.ensure_dataset()
    world.wait_idle()
    before = world.snapshot()
    big = b"name=" + b"x" * (17 * 1024 * 1024)
    r = world.http.post(
        f"{world.base}/create/",
        content=big,
        headers={**world.auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 413, r.text[:300]
    assert world.snapshot() == before
