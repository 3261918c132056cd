"""Session reader: AllenSDK numbering and unit filters on hand-built files; bad input; read-only."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest

from meireport.errors import MeireportError
from meireport.extract import spike_counts
from meireport.sources import UnitFilter, open_session

CHANNELS = [
    dict(id=10, location="VISam", valid_data=True),
    dict(id=11, location="VISp", valid_data=True),
    dict(id=12, location="VISam", valid_data=False),  # broken channel
    dict(id=13, location="None", valid_data=True),  # outside the brain
]


@pytest.fixture()
def handmade(tmp_path, nwb_writer):
    write, unit = nwb_writer
    units = [
        unit(1, 10, [0.1, 0.2, 5.01, 10.3]),
        unit(2, 11, [5.05, 5.2, 5.3]),
        unit(
            3,
            10,
            [],
        ),  # zero spikes: still a good unit
        unit(4, 10, [1.0], quality="noise"),
        unit(5, 10, [1.0], amplitude_cutoff=0.2),
        unit(6, 10, [1.0], presence_ratio=0.9),
        unit(7, 10, [1.0], isi_violations=0.7),
        unit(8, 12, [1.0]),
        unit(9, 13, [1.0]),
        unit(10, 11, [1.0], amplitude_cutoff=0.1, presence_ratio=0.95, isi_violations=0.5),
    ]
    intervals = {
        # h5py lists groups alphabetically: 'a_...' before 'b_...'; ids must follow start_time
        "b_presentations": dict(
            start_time=[0.0, 10.0, 20.0],
            stop_time=[0.25, 10.25, 20.25],
            stimulus_name=["b", "b", "b"],
            stimulus_block=[0.0, 2.0, 2.0],
            frame=[3.0, -1.0, 3.0],
        ),
        "a_presentations": dict(
            start_time=[5.0, 15.0],
            stop_time=[5.25, 15.25],
            stimulus_name=["a", "a"],
            stimulus_block=[1.0, 1.0],
            orientation=["45.0", "N/A"],
            size=["[20.0, 20.0]"] * 2,
        ),
        "invalid_times": dict(start_time=[100.0], stop_time=[101.0]),
    }
    path = tmp_path / "session_123.nwb"
    write(path, units, CHANNELS, intervals)
    return path


def _tables_built_alone_equal_the_whole_tables(path) -> list[str]:
    """Each stimulus' table built first (from its own table and the others' times) equals the
    one cut from the whole presentations table; the stimuli checked."""
    with open_session(path) as whole:
        names = [n for n in whole.stimulus_names if n != "invalid_presentation"]
        for name in names:
            with open_session(path) as s:
                alone = s.stimulus_table(name)
                assert "stimulus_presentations" not in s.__dict__  # the whole was not built
            cut = whole.stimulus_presentations
            pd.testing.assert_frame_equal(alone, whole.stimulus_table(name))
            assert set(alone.index) <= set(cut.index[cut["stimulus_name"] == name])
    return names


def test_one_stimulus_table_is_read_alone_and_equals_the_whole_tables_cut(
        handmade, small_session, tmp_path):
    import pynwb

    assert _tables_built_alone_equal_the_whole_tables(handmade) == ["a", "b"]
    # a simulated session with a stimulus-tagged invalid interval over natural scenes
    path = tmp_path / small_session.nwb_path.name
    shutil.copyfile(small_session.nwb_path, path)
    with open_session(path) as s:
        ns = s.stimulus_table("natural_scenes")
    with pynwb.NWBHDF5IO(str(path), "a") as io:
        nwb = io.read()
        nwb.add_invalid_time_interval(start_time=float(ns["start_time"].iloc[2]),
                                      stop_time=float(ns["stop_time"].iloc[3]),
                                      tags=["stimulus"])
        io.write(nwb)
    assert {"gabors", "natural_scenes"} <= set(_tables_built_alone_equal_the_whole_tables(path))
    with open_session(path) as s:
        assert len(s.stimulus_table("natural_scenes")) < len(ns)  # the masked rows left


def test_allensdk_numbering_and_tables(handmade):
    with open_session(handmade) as s:
        sp = s.stimulus_presentations
        assert sp.index.name == "stimulus_presentation_id"
        assert sp.index.tolist() == [0, 1, 2, 3, 4]
        assert sp["start_time"].tolist() == [0.0, 5.0, 10.0, 15.0, 20.0]
        assert sp["stimulus_name"].tolist() == ["b", "a", "b", "a", "b"]
        assert s.stimulus_names == ["a", "b"]
        b = s.stimulus_table("b")
        assert b.index.tolist() == [0, 2, 4]
        assert b["frame"].tolist() == [3.0, -1.0, 3.0]
        assert np.allclose(b["duration"], 0.25)
        assert "orientation" not in b  # columns of other stimuli are dropped
        a = s.stimulus_table("a")
        assert a.index.tolist() == [1, 3]
        assert a["orientation"].iloc[0] == 45.0 and np.isnan(a["orientation"].iloc[1])
        assert a["size"].tolist() == ["[20.0, 20.0]"] * 2


def test_unit_filter_matches_allensdk_rules(handmade):
    with open_session(handmade) as s:
        assert s.session_id == 123
        assert s.units.index.tolist() == [1, 2, 3, 10]
        assert s.units["ecephys_structure_acronym"].tolist() == ["VISam", "VISp", "VISam", "VISp"]
        assert len(s.all_units) == 10
        assert s.all_units.loc[9, "ecephys_structure_acronym"] is np.nan or pd.isna(
            s.all_units.loc[9, "ecephys_structure_acronym"]
        )
        assert s.areas == ["VISam", "VISp"]
    with open_session(handmade, unit_filter=UnitFilter.none()) as s:
        assert s.units.index.tolist() == list(range(1, 11))
    with open_session(handmade, unit_filter=UnitFilter(amplitude_cutoff_max=0.3)) as s:
        assert s.units.index.tolist() == [1, 2, 3, 5, 10]


def test_spike_times_sorted_float64_and_zero_spike_unit(handmade):
    with open_session(handmade) as s:
        t = s.spike_times[1]
        assert t.dtype == np.float64 and np.all(np.diff(t) >= 0)
        assert s.spike_times[3].size == 0
        assert 4 not in s.spike_times  # filtered out
        c = spike_counts(s, "b", window=(0.0, 0.25))
        assert c.loc[:, 3].tolist() == [0, 0, 0]
        assert c.loc[:, 1].tolist() == [2, 0, 0]
        ca = spike_counts(s, "a", window=(0.0, 0.25))
        assert ca.loc[:, 2].tolist() == [2, 0]  # 5.05, 5.2 in [5.0, 5.25); 5.3 is not
        assert ca.loc[:, 1].tolist() == [1, 0]


def test_window_edges_half_open(handmade):
    with open_session(handmade) as s:
        # unit 1 spikes at 0.1, 0.2: [0.1, 0.2) holds only 0.1
        c = spike_counts(s, "b", window=(0.1, 0.2), unit_ids=[1])
        assert c.loc[0, 1] == 1


def _snapshot(folder):
    return {
        p.relative_to(folder): (p.stat().st_mtime_ns, hashlib.md5(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_bad_inputs_one_clear_line(tmp_path, small_session, handmade, nwb_writer):
    cache = tmp_path / "cache"
    shutil.copytree(small_session.cache_dir, cache)
    before = _snapshot(cache)
    sid = small_session.session_id
    with pytest.raises(MeireportError, match=r"path: .*does not exist"):
        open_session(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MeireportError, match=r"holds no session_<id>"):
        open_session(tmp_path / "empty")
    with pytest.raises(
        MeireportError, match=r"session_id: 42 not in cache .*available: " + str(sid)
    ):
        open_session(cache, session_id=42)
    (tmp_path / "text.nwb").write_text("not hdf5")
    with pytest.raises(MeireportError, match=r"is not an NWB \(HDF5\) file"):
        open_session(tmp_path / "text.nwb")
    import h5py

    with h5py.File(tmp_path / "nounits.nwb", "w") as f:
        f.create_group("intervals")
    with pytest.raises(MeireportError, match=r"has no units table"):
        open_session(tmp_path / "nounits.nwb", session_id=1)
    with open_session(cache) as s:
        with pytest.raises(MeireportError, match=r"stimulus: 'flashes' not in session"):
            spike_counts(s, "flashes")
        with pytest.raises(
            MeireportError, match=r"area: 'VISxx' has no units.*available: CA1, VISam, VISp"
        ):
            spike_counts(s, "natural_scenes", area="VISxx")
        with pytest.raises(MeireportError, match=r"window: expected t1 > t0"):
            spike_counts(s, "natural_scenes", window=(0.25, 0.25))
        with pytest.raises(MeireportError, match=r"window: expected two numbers"):
            spike_counts(s, "natural_scenes", window=(0.25,))
        with pytest.raises(MeireportError, match=r"unit_ids: 99 not in session"):
            spike_counts(s, "natural_scenes", unit_ids=[99])
        with pytest.raises(KeyError, match="99"):
            s.spike_times[99]
        s.model_images([0, -1])
    with pytest.raises(MeireportError, match=r"no natural_scene_templates"):
        open_session(handmade).natural_scene(0)
    assert _snapshot(cache) == before  # nothing written, moved or deleted in the cache


def test_cache_and_bare_path_agree(small_session):
    with open_session(small_session.cache_dir) as a, open_session(small_session.nwb_path) as b:
        assert a.session_id == b.session_id == small_session.session_id
        pd.testing.assert_frame_equal(a.units, b.units)
        assert a.templates_dir == b.templates_dir
        img = b.natural_scene(2)
        assert img.ndim == 2 and img.dtype == np.float64 and img.max() <= 255
