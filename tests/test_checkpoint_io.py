"""Checkpoint files: streamed atomic writes, memory-mapped reads, the legacy format still read."""
from __future__ import annotations

import pytest
import torch

from gfm.checkpoint import read_torch_file, save_checkpoint


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"model": {"w": torch.randn(64, 64, generator=g), "b": torch.arange(10)}, "epoch": 3, "history": "[]"}


def test_a_streamed_checkpoint_reads_back_equal_and_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(), path)
    got = read_torch_file(path, "missing", "unreadable")
    assert got["epoch"] == 3 and torch.equal(got["model"]["w"], _state()["model"]["w"])
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint({"model": {}, "bad": Unpicklable()}, path)
    assert path.read_bytes() == before  # the previous checkpoint is whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # and no temporary file is left


def test_a_mapped_tensor_written_in_place_leaves_the_file_unchanged(tmp_path):
    """Resuming writes into the optimiser's loaded tensors: the mapping is private."""
    path = tmp_path / "last.pt"
    save_checkpoint(_state(), path)
    before = path.read_bytes()
    got = read_torch_file(path, "missing", "unreadable")
    got["model"]["w"].mul_(0).add_(7)
    assert path.read_bytes() == before
    assert torch.equal(read_torch_file(path, "missing", "unreadable")["model"]["w"], _state()["model"]["w"])


def test_the_legacy_format_cannot_be_mapped_and_is_still_read(tmp_path):
    path = tmp_path / "old.pth"
    torch.save(_state(), path, _use_new_zipfile_serialization=False)
    with pytest.raises(RuntimeError):  # the case the fallback is for
        torch.load(path, weights_only=True, mmap=True)
    assert torch.equal(read_torch_file(path, "missing", "unreadable")["model"]["b"], torch.arange(10))


def test_missing_and_garbage_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt: checkpoint not found"):
        read_torch_file(tmp_path / "nothing.pt", "checkpoint not found", "not a checkpoint")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="bad.pt: not a checkpoint"):
        read_torch_file(bad, "checkpoint not found", "not a checkpoint")
