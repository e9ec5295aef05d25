"""One cache folder for everything monai-smia keeps between runs (demo, reproduce, downloads)."""

from __future__ import annotations

from pathlib import Path


def test_demo_reproduce_and_downloads_share_one_cache(monkeypatch, tmp_path):
    from monai_smia.apps import demo
    from monai_smia.apps.data_prep import download
    from monai_smia.apps.reproduce import workflow

    monkeypatch.delenv("MONAI_SMIA_CACHE", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    expected = tmp_path / ".cache" / "monai_smia"
    assert demo.default_cache() == download.default_cache() == workflow.default_cache() == expected
    monkeypatch.setenv("MONAI_SMIA_CACHE", str(tmp_path / "elsewhere"))
    assert demo.default_cache() == download.default_cache() == tmp_path / "elsewhere"
