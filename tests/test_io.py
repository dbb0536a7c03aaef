import pytest

from memqa import io


def test_interrupted_write_leaves_no_tmp_file_and_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old\n")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.write_json(target, {"new": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert target.read_text() == "old\n"


def test_csv_is_written_whole(tmp_path):
    io.write_csv(tmp_path / "loss.csv", [{"step": 1, "loss": 0.5, "lr": 1e-5}], ["step", "loss", "lr"])
    assert (tmp_path / "loss.csv").read_text().splitlines() == ["step,loss,lr", "1,0.5,1e-05"]
