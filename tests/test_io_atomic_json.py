"""``write_json_atomic`` is the one atomic JSON writer: its exact bytes, and the old file kept on failure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from monai_smia.io.atomic import write_json_atomic
from monai_smia.reports import to_jsonable, write_provenance
from monai_smia.reports.tables import write_summary_json

OBJ = {"b": [1, 2.5, float("nan")], "a": {"x": np.float32(0.25), "inf": math.inf}, "s": "é"}


def test_default_bytes_match_json_dump(tmp_path):
    obj = {"name": "d", "training": [{"image": "a.nii.gz"}], "v": float("nan")}
    path = write_json_atomic(tmp_path / "sub" / "datalist.json", obj)
    assert path == tmp_path / "sub" / "datalist.json"
    expected = '{\n  "name": "d",\n  "training": [\n    {\n      "image": "a.nii.gz"\n    }\n  ],\n  "v": NaN\n}'
    assert path.read_text(encoding="utf-8") == expected  # indent 2, no trailing newline, NaN kept
    assert [p.name for p in path.parent.iterdir()] == ["datalist.json"]


REPORT = (
    '{\n  "b": [\n    1,\n    2.5,\n    %s\n  ],\n  "a": {\n    "x": 0.25,\n    "inf": %s\n  },\n  "s": "\\u00e9"\n}\n'
)


@pytest.mark.parametrize("strict, nan, inf", [(True, "null", "null"), (False, "NaN", "Infinity")])
def test_report_bytes(tmp_path, strict, nan, inf):
    """Reports: indent 2, ASCII escapes, a trailing newline; strict reports turn nan and inf into null."""
    path = write_json_atomic(tmp_path / "r.json", to_jsonable(OBJ, strict), allow_nan=not strict, trailing_newline=True)
    assert path.read_bytes() == (REPORT % (nan, inf)).encode("ascii")


def test_strict_report_writers(tmp_path):
    p = write_summary_json(OBJ, tmp_path / "summary.json")
    assert p.read_text(encoding="utf-8").endswith("}\n")
    assert json.loads(p.read_text(encoding="utf-8"))["a"]["inf"] is None
    assert json.loads(write_provenance(tmp_path / "prov.json").read_text(encoding="utf-8"))


def test_allow_nan_false_refuses_and_keeps_old_file(tmp_path):
    path = write_json_atomic(tmp_path / "x.json", {"a": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"a": float("nan")}, allow_nan=False)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
