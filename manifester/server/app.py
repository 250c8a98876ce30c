"""The Flask application: every call of the Theos Datasets page, as in api-contract.md.

Paths live under ``/v1/project/<project_key>/datasets/`` and ``/v1/tasks/<task_id>/``;
media files are served from ``/media/<name>`` (random names, like CDN URLs, so they
need no token). Fields come as multipart or urlencoded form fields (``curl -F``), as
query parameters on GET, or as a JSON object body.

Errors follow Django REST Framework: ``401 {"detail"}``, ``404 {"detail": "Not found."}``,
``400 {"field": ["message"]}`` or ``400 {"error"}``, ``409 {"detail"}`` for a second
upload. Every input is checked before anything is written, so a refused request
changes nothing.

    app = create_app(ServerContext(store, media, runner, project_key="k", token="t"))
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
from flask import Flask, Response, jsonify, request, send_file
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from .images import MediaStore
from .labels import LabelsProblem, LabelsValidator
from .store import SPLITS, Store
from .tasks import TaskRunner, UploadBusy

__all__ = ["MAX_REQUEST_BYTES", "PAGE_SIZE", "ServerContext", "create_app"]

MAX_REQUEST_BYTES = 16 * 1024 * 1024
PAGE_SIZE = 100
MAX_NAME_CHARS = 255
_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")
# ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
_PAGE = re.compile(r"[0-9]{1,12}")
_log = logging.getLogger("manifester.server")


@dataclass(frozen=True)
class ServerContext:
    """What the request handlers need; one per running server (no globals)."""

    store: Store
    media: MediaStore
    runner: TaskRunner
    project_key: str
    token: str

    def __repr__(self) -> str:
        return f"ServerContext(project_key={self.project_key!r}, token=<hidden>)"


class ApiError(Exception):
    """Ends a request with ``status`` and the JSON ``body``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _not_found() -> NoReturn:
    raise ApiError(404, {"detail": "Not found."})


def _field_error(name: str, message: str) -> NoReturn:
    raise ApiError(400, {name: [message]})


class _ExternalIdConverter(PathConverter):
    """Like ``<path:...>``, but also matches a value that begins with '/' (or is only slashes).

    The id itself is then re-read from the raw request path (:func:`_raw_external_id`):
    the server has already decoded ``%2F`` into '/', so the decoded path cannot tell
    ``a%2F`` (id "a/") from ``a`` followed by the route's own slash.
    """

    # werkzeug treats a converter whose regex has no '/' as matching one path segment
    part_isolating = False
    regex = ".+?"


_EXTERNAL_MARKER = "/examples/external/"


def _raw_external_id(suffix: str, decoded: str) -> str:
    """The external id as the client sent it: the raw path between ``/examples/external/`` and ``suffix``.

    ``RAW_URI``/``REQUEST_URI`` (set by werkzeug's server, gunicorn, the test client) keep the
    percent-encoding, so an id with a leading or trailing '/' or with '//' survives. Without
    them (another WSGI server) the decoded value from the router is the best we have.

    >>> # in a request for .../examples/external/%2Flead%2F/skip/
    >>> _raw_external_id("/skip/", "/lead/")  # doctest: +SKIP
    '/lead/'
    """
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not isinstance(raw, str) or not raw:
        return decoded
    if not raw.startswith("/"):  # absolute form: "http://host/path"
        raw = urlsplit(raw).path
    path = raw.split("?", 1)[0]
    start = path.find(_EXTERNAL_MARKER)
    if start < 0 or not path.endswith(suffix):
        return decoded
    segment = path[start + len(_EXTERNAL_MARKER) : len(path) - len(suffix)]
    if not segment:
        return decoded
    # WSGI strings carry the request bytes as latin-1; ids are UTF-8 (as werkzeug decodes them)
    return unquote_to_bytes(segment.encode("latin-1")).decode("utf-8", errors="replace")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _requestable(url: str) -> bool:
    """Whether the downloader could request ``url``: refused here as a 400 rather than as a failed task."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
        httpx.URL(url)  # the client's own parser: bad IDNA hosts, bad IPv6 literals
    except (ValueError, httpx.InvalidURL):
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def create_app(ctx: ServerContext) -> Flask:
    """Build the Flask app for one server.

    >>> app = create_app(ctx)  # doctest: +SKIP
    >>> app.test_client().get("/v1/tasks/x/").status_code  # doctest: +SKIP
    401
    """
    app = Flask("manifester.server")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    # Flask 3.1 caps each non-file form field at 500 kB by default; labels can be larger.
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_REQUEST_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the contract's key order
    app.url_map.merge_slashes = False  # external ids may contain '//'
    app.url_map.converters["external_id"] = _ExternalIdConverter
    labels_validator = LabelsValidator()
    store, runner = ctx.store, ctx.runner
    p = "/v1/project/<project_key>/datasets"

    # -- cross-cutting ------------------------------------------------------------

    @app.before_request
    def authenticate() -> None:
        if not request.path.startswith("/v1/"):
            return
        header = request.headers.get("Authorization", "")
        if not header:
            raise ApiError(401, {"detail": "Authentication credentials were not provided."})
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != "token":
            raise ApiError(401, {"detail": "Invalid token header. Use 'Authorization: Token <api_token>'."})
        if not hmac.compare_digest(parts[1].encode("utf-8"), ctx.token.encode("utf-8")):
            raise ApiError(401, {"detail": "Invalid token."})
        view_args = request.view_args or {}
        if "project_key" in view_args:
            key = str(view_args.pop("project_key"))
            if not hmac.compare_digest(key.encode("utf-8"), ctx.project_key.encode("utf-8")):
                _not_found()

    @app.after_request
    def finish(response: Response) -> Response:
        # A body the handler did not read would be parsed as the next request on a
        # kept-alive connection: drain small ones, close the connection after big ones.
        length = request.content_length
        if length:
            if length > MAX_REQUEST_BYTES:
                response.headers["Connection"] = "close"
            else:
                try:
                    while request.stream.read(65536):
                        pass
                except Exception:
                    response.headers["Connection"] = "close"
        return response

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int]:
        response = jsonify(exc.body)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Token"
        return response, exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        if code < 400:  # routing redirects (a missing trailing slash) keep their Location
            return exc.get_response()
        if code == 404:
            body = {"detail": "Not found."}
        elif code == 405:
            body = {"detail": f'Method "{request.method}" not allowed.'}
        elif code == 413:
            body = {"detail": f"Request body is larger than {MAX_REQUEST_BYTES:,} bytes."}
        else:
            body = {"detail": exc.description or exc.name}
        response = jsonify(body)
        valid_methods = getattr(exc, "valid_methods", None)
        if code == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response, code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        # Logged here for the operator; the client gets no traceback.
        _log.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
        return jsonify({"detail": "Internal server error."}), 500

    # -- helpers ------------------------------------------------------------------

    def fields() -> dict[str, str]:
        values: dict[str, str] = dict(request.args.items())
        if request.mimetype == "application/json":
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                raise ApiError(400, {"error": "The JSON body must be an object of fields."})
            for key, value in body.items():
                values[str(key)] = value if isinstance(value, str) else json.dumps(value)
        else:
            values.update(request.form.items())
            # curl -F "labels=@labels.json" sends a file part; its text is the field's value.
            for key, upload in request.files.items():
                values.setdefault(key, upload.read().decode("utf-8", errors="replace"))
        for key, value in values.items():
            # A JSON body can carry lone surrogates ("\ud800"), which SQLite cannot store.
            if not _encodable(key) or not _encodable(value):
                _field_error(key if _encodable(key) else "error", "Contains a character that is not valid Unicode.")
        return values

    def dataset_or_404(dataset_id: int) -> dict[str, Any]:
        ds = store.get_dataset(dataset_id)
        if ds is None:
            _not_found()
        return ds

    def base_url() -> str:
        return request.host_url.rstrip("/")

    def render_class(c: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": c["position"],
            "db_id": c["db_id"],
            "name": c["name"],
            "color": c["color"],
            "with_text": bool(c["with_text"]),
            "is_superclass": False,
        }

    def render_dataset(ds: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": ds["id"],
            "name": ds["name"],
            "created": ds["created"],
            "counts": store.split_counts(ds["id"]),
            "classes": [render_class(c) for c in store.classes(ds["id"])],
        }

    def render_example(ex: dict[str, Any]) -> dict[str, Any]:
        labels = json.loads(ex["labels"])
        return {
            "id": ex["id"],
            "external_id": ex["external_id"],
            "split": ex["split"],
            "image": f"{base_url()}/media/{ex['image']}",
            "thumbnail": f"{base_url()}/media/{ex['thumbnail']}",
            "width": ex["width"],
            "height": ex["height"],
            "labels": labels,
            "labeled": bool(labels) or bool(ex["skipped"]),
            "skipped": bool(ex["skipped"]),
        }

    def name_field(values: dict[str, str], required: bool) -> str | None:
        raw = values.get("name")
        if raw is None or not raw.strip():
            if required:
                _field_error("name", "This field is required.")
            if raw is not None:
                _field_error("name", "This field may not be blank.")
            return None
        name = raw.strip()
        if len(name) > MAX_NAME_CHARS:
            _field_error("name", f"Ensure this field has no more than {MAX_NAME_CHARS} characters.")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            _field_error("name", "Control characters are not allowed.")
        return name

    def color_field(values: dict[str, str], required: bool) -> str | None:
        raw = values.get("color")
        if raw is None or raw == "":
            if required:
                _field_error("color", "This field is required.")
            return None
        if not _COLOR.match(raw.strip()):
            _field_error("color", f"{raw!r} is not a hexadecimal color such as #4AFFBA.")
        return raw.strip()

    def db_ids_field(values: dict[str, str], dataset_id: int, minimum: int) -> list[int]:
        raw = values.get("db_ids")
        if raw is None or raw.strip() == "":
            _field_error("db_ids", "This field is required.")
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError):  # ValueError: bad JSON, or an integer of 4300+ digits
            parsed = None
        if not isinstance(parsed, list) or not all(type(x) is int for x in parsed):
            _field_error("db_ids", "Must be a JSON array of class db_ids, such as [1,4,6].")
        ids = list(dict.fromkeys(parsed))
        if len(ids) < minimum:
            _field_error("db_ids", f"Give at least {minimum} different class db_id{'s' if minimum > 1 else ''}.")
        known = {c["db_id"] for c in store.classes(dataset_id)}
        unknown = [i for i in ids if i not in known]
        if unknown:
            _field_error("db_ids", f"Unknown class db_id(s) for this dataset: {', '.join(map(str, unknown))}.")
        return ids

    def example_or_404(dataset_id: int, example_id: int | None, external_id: str | None) -> dict[str, Any]:
        dataset_or_404(dataset_id)
        if external_id is not None:
            ex = store.get_example_by_external_id(dataset_id, external_id)
        else:
            ex = store.get_example(dataset_id, example_id or 0)
        if ex is None:
            _not_found()
        return ex

    # -- datasets -----------------------------------------------------------------

    @app.get(f"{p}/")
    def list_datasets() -> Any:
        return jsonify([render_dataset(ds) for ds in store.list_datasets()])

    @app.post(f"{p}/create/")
    def create_dataset() -> Any:
        name = name_field(fields(), required=True)
        assert name is not None
        with store.tx():
            return jsonify(render_dataset(store.create_dataset(name)))

    @app.get(f"{p}/<int:dataset_id>/")
    def get_dataset(dataset_id: int) -> Any:
        with store.tx():
            return jsonify(render_dataset(dataset_or_404(dataset_id)))

    @app.post(f"{p}/<int:dataset_id>/delete/")
    def delete_dataset(dataset_id: int) -> Any:
        with store.tx():
            dataset_or_404(dataset_id)
            runner.stop_upload(dataset_id)  # its imports check the stop flag under this same lock
            names = store.delete_dataset(dataset_id)
        ctx.media.delete(names)
        return jsonify({"id": dataset_id, "deleted": True})

    # -- uploads and tasks ------------------------------------------------------------

    @app.post(f"{p}/<int:dataset_id>/upload/")
    def upload(dataset_id: int) -> Any:
        dataset_or_404(dataset_id)
        url = (fields().get("manifest_url") or "").strip()
        if not url:
            _field_error("manifest_url", "This field is required.")
        if len(url) > 16384 or not _requestable(url):
            _field_error("manifest_url", "Enter a valid http(s) URL.")
        try:
            with store.tx():
                dataset_or_404(dataset_id)
                task_id = runner.start_upload(dataset_id, url)
        except UploadBusy as busy:
            raise ApiError(
                409,
                {
                    "detail": f"An upload is already running on dataset {dataset_id} (task {busy.task_id});"
                    " wait until it finishes or POST upload/stop/ first."
                },
            ) from None
        return jsonify({"task_id": task_id})

    @app.post(f"{p}/<int:dataset_id>/upload/stop/")
    def stop_upload(dataset_id: int) -> Any:
        dataset_or_404(dataset_id)
        task_id = runner.stop_upload(dataset_id)
        if task_id is None:
            return jsonify({"task_id": None, "detail": "No upload is running on this dataset."})
        return jsonify({"task_id": task_id, "detail": "Upload stopped."})

    @app.get("/v1/tasks/<task_id>/")
    def get_task(task_id: str) -> Any:
        task = runner.task(task_id)
        if task is None:
            _not_found()
        return jsonify(task)

    # -- classes ------------------------------------------------------------------

    @app.post(f"{p}/<int:dataset_id>/classes/create/")
    def create_class(dataset_id: int) -> Any:
        dataset_or_404(dataset_id)
        values = fields()
        name = name_field(values, required=True)
        color = color_field(values, required=True)
        raw = values.get("with_text", "false").strip().lower() or "false"
        if raw not in ("true", "false"):
            _field_error("with_text", 'Must be "true" or "false".')
        assert name is not None and color is not None
        with store.tx():
            dataset_or_404(dataset_id)
            return jsonify(render_class(store.create_class(dataset_id, name, color, raw == "true")))

    @app.post(f"{p}/<int:dataset_id>/classes/<int:class_db_id>/edit/")
    def edit_class(dataset_id: int, class_db_id: int) -> Any:
        with store.tx():
            dataset_or_404(dataset_id)
            if store.get_class(dataset_id, class_db_id) is None:
                _not_found()
            values = fields()
            name = name_field(values, required=False)
            color = color_field(values, required=False)
            if name is None and color is None:
                raise ApiError(400, {"error": "Give name and/or color to edit the class."})
            edited = store.edit_class(dataset_id, class_db_id, name, color)
            assert edited is not None
            return jsonify(render_class(edited))

    @app.post(f"{p}/<int:dataset_id>/classes/delete/")
    def delete_classes(dataset_id: int) -> Any:
        with store.tx():
            dataset_or_404(dataset_id)
            ids = db_ids_field(fields(), dataset_id, minimum=1)

            def work(progress: Any) -> dict[str, Any]:
                changed, _ = store.replace_classes(dataset_id, set(ids), None, progress)
                return {"deleted_db_ids": ids, "examples_changed": changed}

            return jsonify({"task_id": runner.start_class_task("classes_delete", dataset_id, work)})

    @app.post(f"{p}/<int:dataset_id>/classes/merge/")
    def merge_classes(dataset_id: int) -> Any:
        with store.tx():
            dataset_or_404(dataset_id)
            values = fields()
            ids = db_ids_field(values, dataset_id, minimum=2)
            name = name_field(values, required=True)
            color = color_field(values, required=True)
            assert name is not None and color is not None
            # The merged class may carry text if any of its sources could.
            with_text = any(c["with_text"] for c in store.classes(dataset_id) if c["db_id"] in ids)

            def work(progress: Any) -> dict[str, Any]:
                changed, new_db_id = store.replace_classes(dataset_id, set(ids), (name, color, with_text), progress)
                return {"db_id": new_db_id, "merged_db_ids": ids, "examples_changed": changed}

            return jsonify({"task_id": runner.start_class_task("classes_merge", dataset_id, work)})

    # -- examples -----------------------------------------------------------------

    @app.route(f"{p}/<int:dataset_id>/examples/", methods=["GET", "POST"])
    def list_examples(dataset_id: int) -> Any:
        with store.tx():
            dataset_or_404(dataset_id)
            values = fields()
            split = (values.get("split") or "train").strip()
            if split not in SPLITS:
                _field_error("split", f'"{split}" is not a valid choice; use train, valid or test.')
            raw_page = (values.get("page") or "1").strip()
            if not _PAGE.fullmatch(raw_page) or int(raw_page) < 1:
                _field_error("page", "A valid integer of 1 or more is required.")
            page = int(raw_page)
            count, rows = store.examples_page(dataset_id, split, page, PAGE_SIZE)
            page_count = math.ceil(count / PAGE_SIZE)
            if page > max(page_count, 1):
                raise ApiError(404, {"detail": "Invalid page."})
            return jsonify(
                {"page": page, "page_count": page_count, "count": count, "examples": [render_example(r) for r in rows]}
            )

    @app.get(f"{p}/<int:dataset_id>/examples/<int:example_id>/")
    def get_example(dataset_id: int, example_id: int) -> Any:
        return jsonify(render_example(example_or_404(dataset_id, example_id, None)))

    # No trailing '/' in this rule: werkzeug's handling of a rule's final slash refuses a
    # value that ends with '/', so the view checks and strips the slash itself.
    @app.get(f"{p}/<int:dataset_id>/examples/external/<external_id:external_id>")
    def get_example_external(dataset_id: int, external_id: str) -> Any:
        if not external_id.endswith("/") or external_id == "/":
            _not_found()
        external_id = _raw_external_id("/", external_id[:-1])
        return jsonify(render_example(example_or_404(dataset_id, None, external_id)))

    def set_labels(dataset_id: int, example_id: int | None, external_id: str | None) -> Any:
        with store.tx():
            ex = example_or_404(dataset_id, example_id, external_id)
            text = fields().get("labels")
            if text is None or not text.strip():
                _field_error("labels", "This field is required.")
            try:
                boxes = labels_validator.check(
                    text, classes=store.classes(dataset_id), width=ex["width"], height=ex["height"]
                )
            except LabelsProblem as exc:
                _field_error("labels", str(exc))
            store.set_labels(ex["id"], boxes, skipped=False)
            updated = store.get_example(dataset_id, ex["id"])
            assert updated is not None
            return jsonify(render_example(updated))

    def skip(dataset_id: int, example_id: int | None, external_id: str | None) -> Any:
        with store.tx():
            ex = example_or_404(dataset_id, example_id, external_id)
            # Skipping says "nothing to label here": the example counts as labeled, with no boxes.
            store.set_labels(ex["id"], [], skipped=True)
            updated = store.get_example(dataset_id, ex["id"])
            assert updated is not None
            return jsonify(render_example(updated))

    @app.post(f"{p}/<int:dataset_id>/examples/<int:example_id>/labels/set/")
    def set_labels_by_id(dataset_id: int, example_id: int) -> Any:
        return set_labels(dataset_id, example_id, None)

    @app.post(f"{p}/<int:dataset_id>/examples/external/<external_id:external_id>/labels/set/")
    def set_labels_by_external_id(dataset_id: int, external_id: str) -> Any:
        return set_labels(dataset_id, None, _raw_external_id("/labels/set/", external_id))

    @app.post(f"{p}/<int:dataset_id>/examples/<int:example_id>/skip/")
    def skip_by_id(dataset_id: int, example_id: int) -> Any:
        return skip(dataset_id, example_id, None)

    @app.post(f"{p}/<int:dataset_id>/examples/external/<external_id:external_id>/skip/")
    def skip_by_external_id(dataset_id: int, external_id: str) -> Any:
        return skip(dataset_id, None, _raw_external_id("/skip/", external_id))

    # -- media --------------------------------------------------------------------

    @app.get("/media/<name>")
    def media(name: str) -> Any:
        path = ctx.media.path_for(name)
        if path is None or not path.is_file():
            _not_found()
        return send_file(path, conditional=True, max_age=3600)

    return app
