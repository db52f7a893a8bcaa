"""RWKV state files (core/roleplay/state_files.py): what a state-tuning .pth must hold, the
messages a wrong one gets, and the reference a character (and its card) carries."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

from core.roleplay import state_files
from core.roleplay.state_files import (
    MAX_STATE_FILE_BYTES,
    StateFileError,
    StateFileRef,
    display_name,
    parse_state_file,
    reference,
    with_reference,
)
from tests.support.state_file import state_file, time_states, to_bytes


def test_a_state_file_is_read_in_its_own_layout() -> None:
    tensors = time_states(layers=3, heads=2, head_size=64, seed=5)
    wkv = parse_state_file(to_bytes(tensors), "tuned.pth")
    assert state_files.describe(wkv) == (3, 2, 64)
    for i, w in enumerate(wkv):
        assert w.dtype == np.float32 and w.shape == (2, 64, 64) and not w.flags.writeable
        # the file's [head, value, key] as it is: the back ends map it to theirs
        assert np.array_equal(w, tensors[f"blocks.{i}.att.time_state"].numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_files_are_read_as_float32(dtype) -> None:
    tensors = time_states(layers=2)
    wkv = parse_state_file(to_bytes(tensors, dtype), "half.pth")
    want = tensors["blocks.1.att.time_state"].to(dtype).float().numpy()
    assert wkv[1].dtype == np.float32 and np.array_equal(wkv[1], want)


def _refused(data: bytes, *words: str) -> str:
    with pytest.raises(StateFileError) as e:
        parse_state_file(data, "../../evil/x.pth")
    msg = str(e.value)
    for w in words:
        assert w in msg, msg
    assert "../" not in msg  # the name is shown as its last part only
    return msg


def test_wrong_files_are_refused_with_a_reason() -> None:
    _refused(b"", "empty")
    _refused(b"hello, not a zip", "not a PyTorch .pth file")
    # a model is not a state file
    model = to_bytes({"emb.weight": torch.zeros(4, 4), **time_states(layers=1)})
    _refused(model, "is a model, not a state file")
    _refused(to_bytes({"blocks.0.att.time_decay": torch.zeros(2, 64)}), "time_decay")
    # a layer missing, shapes that differ or are not [heads, N, N], integers, NaN
    t = time_states(layers=3)
    del t["blocks.1.att.time_state"]
    _refused(to_bytes(t), "lacks layers")
    t = time_states(layers=2)
    t["blocks.1.att.time_state"] = torch.zeros(2, 32, 32)
    _refused(to_bytes(t), "layer 1 has the shape")
    _refused(to_bytes({"blocks.0.att.time_state": torch.zeros(2, 64, 32)}), "[heads, head size")
    _refused(to_bytes({"blocks.0.att.time_state": torch.zeros(128)}), "[heads, head size")
    ints = {"blocks.0.att.time_state": torch.zeros(2, 8, 8, dtype=torch.int32)}
    buf = io.BytesIO()
    torch.save(ints, buf)
    _refused(buf.getvalue(), "not floating point")
    t = time_states(layers=1)
    t["blocks.0.att.time_state"][0, 0, 0] = float("nan")
    _refused(to_bytes(t), "not finite")


class _Code:
    def __reduce__(self):  # what a malicious file would run
        return (print, ("pwned",))


def test_pickled_code_is_refused_not_run(capsys) -> None:
    buf = io.BytesIO()
    torch.save({"blocks.0.att.time_state": _Code()}, buf)
    msg = _refused(buf.getvalue(), "pickled program")
    assert "pwned" not in capsys.readouterr().out, msg


def test_size_limits() -> None:
    _refused(b"\0" * (MAX_STATE_FILE_BYTES + 1), "the limit is 48 MB")
    # a small archive that claims to unpack to far more than the limit is not given to torch
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            chunk = b"\0" * 2**20
            for _ in range(2 * MAX_STATE_FILE_BYTES // 2**20 + 1):
                f.write(chunk)
    assert len(buf.getvalue()) < 2**20
    _refused(buf.getvalue(), "far too large")


def test_file_names_are_only_shown() -> None:
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\me\\tuned.pth") == "tuned.pth"
    assert display_name("a\u202egnp.pth\n") == "agnp.pth"  # no direction or control characters
    assert display_name("") == "state.pth"
    assert state_files.path_of("../" + "a" * 61) is None
    assert state_files.path_of("A" * 64) is None  # lowercase hex only: the stored names
    assert state_files.path_of("a" * 64).name == "a" * 64 + ".pth"


def test_references_on_characters_and_cards() -> None:
    ref = StateFileRef("tuned.pth", "ab" * 32, 24, 16, 64, 1000)
    ext = with_reference({"other": 1, "rwkv_roleplay": {"x": 2}}, ref)
    assert ext["other"] == 1 and ext["rwkv_roleplay"]["x"] == 2
    assert ext["rwkv_roleplay"]["state_file"] == {
        "name": "tuned.pth",
        "sha256": "ab" * 32,
        "layers": 24,
        "heads": 16,
        "head_size": 64,
        "bytes": 1000,
    }
    assert reference(ext) == ref
    assert reference({}) is None and reference(None) is None
    gone = with_reference(ext, None)
    assert reference(gone) is None and gone["rwkv_roleplay"] == {"x": 2}
    assert with_reference({"rwkv_roleplay": {"state_file": {}}}, None) == {}
    # a card's reference is untrusted: a path or a short hash is never used as a file name
    for bad in ({"sha256": "../../x"}, {"sha256": "ab"}, "tuned.pth", {"name": "x"}):
        with pytest.raises(StateFileError, match="malformed"):
            reference({"rwkv_roleplay": {"state_file": bad}})
    # odd sizes are dropped (0: unknown), an odd name is shown cleaned
    odd = reference(
        {"rwkv_roleplay": {"state_file": {"sha256": "cd" * 32, "name": "../x.pth", "layers": -1}}}
    )
    assert odd == StateFileRef("x.pth", "cd" * 32, 0, 0, 0, 0)


def test_the_test_files_are_what_state_tuning_writes() -> None:
    """The files the tests build hold only time_state tensors, saved by torch.save."""
    data = state_file(layers=2)
    sd = torch.load(io.BytesIO(data), weights_only=True)
    assert sorted(sd) == ["blocks.0.att.time_state", "blocks.1.att.time_state"]
    assert zipfile.is_zipfile(io.BytesIO(data))
    with pytest.raises(pickle.UnpicklingError):
        buf = io.BytesIO()
        torch.save({"x": _Code()}, buf)
        buf.seek(0)
        torch.load(buf, weights_only=True)
