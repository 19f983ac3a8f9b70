"""`load_weights_only` never runs pickled code and says so, naming the blocked global."""

import os

import pytest
import torch

from sde.serialization import UnsafeFileError, load_weights_only


class _Payload:
    def __reduce__(self):  # unpickling would call os.getpid(): harmless, but code
        return (os.getpid, ())


def test_malicious_file_is_refused_with_the_global_named(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": _Payload()}, path)
    with pytest.raises(UnsafeFileError, match=r"contains code .*`posix\.getpid`"):
        load_weights_only(path, what="checkpoint")


def test_plain_tensors_load(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.arange(3.0), "step": 7}, path)
    out = load_weights_only(path)
    assert out["step"] == 7 and torch.equal(out["w"], torch.arange(3.0))


def test_corrupt_file_is_not_called_code(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(Exception) as info:
        load_weights_only(path)
    assert not isinstance(info.value, UnsafeFileError)
