"""AppTest of Settings -> Convert: a .pth becomes a GGUF in the models folder; a destination
elsewhere is refused in the page, and an existing file is replaced only after a yes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.ui import check, errors, open_app

PAGE = "pages/settings.py"


def _dest(at: Any) -> Any:
    return next(t for t in at.text_input if t.label.startswith("File name in the models folder"))


def _open_with_source(src: Path) -> Any:
    at = open_app(PAGE)
    at.selectbox(key="conv_src").set_value("__other__").run()
    at.text_input(key="conv_path").input(str(src)).run()
    at.selectbox(key="conv_type").set_value("f16").run()
    return check(at)


def test_convert_into_the_models_folder_with_progress(
    app_env: Path, tiny_model: Path, models: Path, tmp_path: Path
) -> None:
    at = _open_with_source(tiny_model)
    assert _dest(at).value == f"{tiny_model.stem}-f16.gguf"
    at.button(key="convert_start").click().run()
    check(at)
    assert not errors(at), errors(at)
    out = models / f"{tiny_model.stem}-f16.gguf"
    assert out.is_file() and out.stat().st_size > 1_000_000
    assert any("Written" in s.value for s in at.success)
    # a bad source is an error, not a traceback
    at.text_input(key="conv_path").input(str(tmp_path / "missing.pth")).run()
    _dest(at).input("other.gguf").run()
    at.button(key="convert_start").click().run()
    check(at)
    assert errors(at) and errors(at)[0].startswith("Could not convert the model:")


def test_an_existing_file_needs_a_yes_and_the_data_directory_is_off_limits(
    app_env: Path, tiny_model: Path, models: Path
) -> None:
    mine = models / "mine.gguf"
    mine.write_bytes(b"the user's own file")
    at = _open_with_source(tiny_model)
    _dest(at).input("mine.gguf").run()
    check(at)
    assert any(w.value.startswith("mine\\.gguf already exists") for w in at.warning)
    assert at.button(key="convert_start").disabled
    assert mine.read_bytes() == b"the user's own file"
    at.checkbox(key=f"conv_rep_{mine}").check().run()
    assert not at.button(key="convert_start").disabled
    at.button(key="convert_start").click().run()
    check(at)
    assert not errors(at), errors(at)
    assert mine.read_bytes()[:4] == b"GGUF"

    db = app_env / "app.db"
    before = db.read_bytes()
    for name in ("../x.gguf", str(db), str(app_env / "x.gguf"), "x.txt"):
        _dest(at).input(name).run()
        check(at)
        assert errors(at) and errors(at)[0].startswith("Could not convert the model:"), name
        assert at.button(key="convert_start").disabled
    assert db.read_bytes() == before and not (models.parent / "x.gguf").exists()
