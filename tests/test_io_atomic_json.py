"""``write_json_atomic`` is the one atomic JSON writer; its bytes match what each caller wrote before."""

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
    assert path.read_bytes() == json.dumps(obj, indent=2).encode("utf-8")  # no trailing newline, NaN kept
    assert [p.name for p in path.parent.iterdir()] == ["datalist.json"]


@pytest.mark.parametrize("strict", [True, False])
def test_report_bytes_match_former_reports_writer(tmp_path, strict):
    path = write_json_atomic(tmp_path / "r.json", to_jsonable(OBJ, strict), allow_nan=not strict, trailing_newline=True)
    former = json.dumps(to_jsonable(OBJ, strict), indent=2, allow_nan=not strict) + "\n"
    assert path.read_bytes() == former.encode("utf-8")


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
