"""Command line: the README's main job, and one clear line for bad input."""

from __future__ import annotations

from meireport.report.cli import main


def test_simulate_then_extract(tmp_path, capsys):
    assert (
        main(["simulate", "--out", str(tmp_path), "--n-images", "6", "--n-repeats", "2", "--quiet"])
        == 0
    )
    out = capsys.readouterr().out
    assert "simulated session 700000001" in out and "session_700000001.nwb" in out
    csv = tmp_path / "counts.csv"
    assert main(["extract", str(tmp_path), "--area", "VISam", "--out", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "VISam" in out and "VISp" in out and "total_spikes" in out
    header = csv.read_text().splitlines()[0]
    assert header.startswith("stimulus_presentation_id,")
    assert len(csv.read_text().splitlines()) == 7 * 2 + 1


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("meireport: error: path:")
    assert "Traceback" not in err
