"""Validation of Theos JSON labels for ``labels/set/``.

Two layers: ``schemas/labels.schema.json`` (shape: a list of boxes with a non-negative
``class_id``, ``x``, ``y``, ``width``, ``height`` and optional ``text``), then what
depends on the dataset: the class exists, the box lies inside the image, ``text``
only for ``with_text`` classes. The first problem found is reported, naming the box.

    validator = LabelsValidator()
    boxes = validator.check('[{"class_id": 0, "x": 1, "y": 2, "width": 3, "height": 4}]',
                            classes=[{"with_text": 0}], width=640, height=480)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import jsonschema  # type: ignore[import-untyped]

__all__ = ["LabelsProblem", "LabelsValidator"]


class LabelsProblem(Exception):
    """The labels are refused; the message names the box and the problem."""


def _reject_constant(name: str) -> float:
    raise LabelsProblem(f"labels must be plain JSON; {name} is not a number")


class LabelsValidator:
    """Checks labels against the schema and against one example's dataset and image.

    >>> LabelsValidator().check("[]", classes=[], width=10, height=10)
    []
    """

    def __init__(self) -> None:
        schema = json.loads((files("manifester") / "schemas" / "labels.schema.json").read_text("utf-8"))
        self._validator = jsonschema.validators.validator_for(schema)(schema)

    def check(self, text: str, *, classes: Sequence[dict[str, Any]], width: int, height: int) -> list[dict[str, Any]]:
        """Parse and validate; return the boxes with ``class_id`` as an ``int``."""
        try:
            boxes = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            raise LabelsProblem(f"labels is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except RecursionError:
            raise LabelsProblem("labels is nested too deeply") from None
        except ValueError as exc:  # e.g. an integer literal of more than 4300 digits
            raise LabelsProblem(f"labels is not usable JSON: {exc}") from None
        error = next(iter(self._validator.iter_errors(boxes)), None)
        if error is not None:
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
            raise LabelsProblem(f"labels{path}: {error.message}")
        checked: list[dict[str, Any]] = []
        for i, box in enumerate(boxes):
            where = f"labels[{i}]"
            for key in ("x", "y", "width", "height"):
                if not math.isfinite(box[key]):
                    raise LabelsProblem(f"{where}.{key}: {box[key]} is not a finite number")
            class_id = int(box["class_id"])
            if class_id >= len(classes):
                known = f"ids 0-{len(classes) - 1}" if classes else "none yet; create one with classes/create/"
                raise LabelsProblem(f"{where}.class_id: {class_id} is not a class of this dataset (classes: {known})")
            if box["x"] + box["width"] > width or box["y"] + box["height"] > height:
                raise LabelsProblem(
                    f"{where}: box x={box['x']}, y={box['y']}, width={box['width']}, height={box['height']}"
                    f" does not fit inside the {width}x{height} image"
                )
            if "text" in box and not classes[class_id]["with_text"]:
                raise LabelsProblem(f"{where}.text: class {class_id} was not created with with_text=true")
            checked.append({**box, "class_id": class_id})
        return checked
