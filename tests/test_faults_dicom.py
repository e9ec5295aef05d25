"""Fault tests for the DICOM path on a real chest series (Lung-PET-CT-Dx A0002, 5 slices copied):
the writer never replaces a folder it did not write, a cut-short slice is named before anything is
read into a volume, and temporary folders of a killed writer are removed by the next write."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monai_smia.io import find_dicom_series, load_source_volume, write_adversarial_dicom_series
from monai_smia.io.atomic import OWNER_MARKER, atomic_output_dir

SERIES = "ct/chest/lung_pet_ct_dx_A0002"
EPS = 20.0


def _tree_hashes(path: Path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


@pytest.fixture()
def workspace(data_dir, tmp_path) -> Path:
    """``tmp/parent/{series/<5 slices>, notes.txt}``: a source series next to an unrelated file."""
    src = data_dir / SERIES
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    series = tmp_path / "parent" / "series"
    series.mkdir(parents=True)
    for f in sorted(src.glob("*.dcm"))[10:15]:
        shutil.copy(f, series / f.name)
    (tmp_path / "parent" / "notes.txt").write_text("unrelated user data\n")
    return tmp_path


def _perturbation(series: Path) -> tuple[np.ndarray, np.ndarray]:
    values, affine, _ = load_source_volume(series)
    rng = np.random.default_rng(0)
    return rng.uniform(-EPS, EPS, values.shape), affine


@pytest.mark.parametrize("where", ["parent", "source", "ancestor", "unrelated", "inside_source"])
def test_writer_never_replaces_a_folder_it_did_not_write(workspace, where):
    series = workspace / "parent" / "series"
    unrelated = workspace / "mine"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("user file\n")
    target = {
        "parent": workspace / "parent",
        "source": series,
        "ancestor": workspace,
        "unrelated": unrelated,
        "inside_source": series / "adv",
    }[where]
    before = _tree_hashes(workspace)
    d, affine = _perturbation(series)
    with pytest.raises((ValueError, FileExistsError)) as err:
        write_adversarial_dicom_series(series, d, target, eps=EPS, affine=affine, overwrite=True)
    assert str(target) in str(err.value) or str(series) in str(err.value)
    assert _tree_hashes(workspace) == before
    assert not list(target.parent.glob(f".{target.name}.tmp-*"))


def test_writer_refuses_to_overwrite_by_default_and_replaces_its_own_output(workspace):
    series = workspace / "parent" / "series"
    d, affine = _perturbation(series)
    out = workspace / "adv"
    first = write_adversarial_dicom_series(series, d, out, eps=EPS, affine=affine)
    assert (out / OWNER_MARKER).is_file() and len(list(out.glob("*.dcm"))) == 5
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_adversarial_dicom_series(series, d, out, eps=EPS, affine=affine)
    again = write_adversarial_dicom_series(series, d, out, eps=EPS, affine=affine, overwrite=True)
    assert again.sop_instance_uids == first.sop_instance_uids


def test_cut_short_slice_is_named_before_anything_is_read(workspace):
    series = workspace / "parent" / "series"
    victim = sorted(series.glob("*.dcm"))[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=victim.name) as err:
        find_dicom_series(series)
    assert "cut short" in str(err.value)
    with pytest.raises(ValueError, match=victim.name):
        load_source_volume(series)


def test_missing_slice_breaks_even_spacing(workspace):
    series = workspace / "parent" / "series"
    sorted(series.glob("*.dcm"))[2].unlink()
    with pytest.raises(ValueError, match="not evenly spaced"):
        find_dicom_series(series)


def test_killed_writer_leaves_no_temporary_after_the_next_run(workspace):
    """A writer killed (SIGKILL) while its temporary folder exists; the next write removes it."""
    out = workspace / "adv"
    code = (
        "import os, sys, time\n"
        "from monai_smia.io.atomic import atomic_output_dir\n"
        "with atomic_output_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / '0000.dcm').write_bytes(b'partial')\n"
        "    print(tmp, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    proc.kill()
    proc.wait()
    assert tmp.is_dir() and not out.exists()
    with atomic_output_dir(out) as new:
        (new / "done").write_text("ok")
    assert not tmp.exists() and (out / "done").is_file()
    assert not [p for p in workspace.iterdir() if p.name.startswith(".adv.")]


def test_temporary_of_a_live_process_is_left_alone(tmp_path):
    out = tmp_path / "adv"
    live = tmp_path / f".adv.tmp-{os.getpid()}-abc"
    live.mkdir()
    (live / OWNER_MARKER).write_text("")
    with atomic_output_dir(out) as new:
        (new / "x").write_text("1")
    assert live.is_dir()
