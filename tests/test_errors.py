"""atomic_path: the final name appears only when writing succeeded."""

import pytest

from neurojepa.errors import atomic_path


def test_file_appears_only_on_success(tmp_path):
    final = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash while writing")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"whole")
    assert final.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [final]


def test_directory_replaced_whole(tmp_path):
    final = tmp_path / "run"
    with atomic_path(final, directory=True) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ValueError):
        with atomic_path(final, directory=True) as tmp:
            (tmp / "b.txt").write_text("2")
            raise ValueError
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    with atomic_path(final, directory=True) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
