"""Parity of our h5py reader with AllenSDK 2.16.2's ``EcephysSession`` (run by ``nox -s allen``).

Every test is marked ``allen``: ``nox -s tests`` deselects them, and allensdk is imported inside
the fixtures only (plain imports, never ``importorskip``), so in ``nox -s allen``'s env a missing
allensdk fails loudly instead of skipping.

The fixture is written inside this env by our own simulator with ``allensdk_format=True``. AllenSDK
quirks met on the way (each handled below or in ``simulate.py``):

1. ``EcephysNwbSessionApi.get_probes`` / ``Probes.from_nwb`` read ``probe_id``,
   ``lfp_sampling_rate``, ``has_lfp_data`` from the electrode group and ``sampling_rate`` from its
   device: a plain pynwb ``ElectrodeGroup`` raises ``AttributeError``. The simulator writes
   AllenSDK's ``ndx-aibs-ecephys`` ``EcephysElectrodeGroup``/``EcephysProbe`` when allensdk is
   installed (importing ``allensdk.brain_observatory.ecephys.nwb`` registers them).
2. ``Units.from_nwb`` builds ``Unit(**row)``, which requires ``cluster_id``,
   ``spike_amplitudes`` and ``waveform_mean`` columns (placeholders in the fixture).
3. ``_build_stimulus_presentations`` drops a ``stimulus_index`` column and raises ``KeyError``
   when there is none.
4. A session opened from a bare NWB path has no ``ecephys_structure_acronym``: AllenSDK names
   the NWB ``location`` ``structure_acronym`` (``None`` for "None"/"", substructure suffix
   stripped: "DG-mo" -> "DG"); ``EcephysProjectCache`` adds ``ecephys_structure_acronym`` from
   its ``channels.csv`` through ``external_channel_columns``. Here we pass the same through
   ``api_kwargs`` (built from the file's electrodes table, as channels.csv would give it).
5. ``Presentations.from_nwb`` turns any float column whose values are all 0/1 into pandas
   ``boolean`` (a session with only blocks 0 and 1 gets a boolean ``stimulus_block``); and
   ``_build_stimulus_presentations`` fills every missing value with the string ``"null"``, so
   parameter columns come back as ``object``. The comparisons below cast to float.
6. ``build_spike_histogram`` counts spikes in the CLOSED window ``[onset + t0, onset + t1]``
   (searchsorted left/right); ours (``extract.count_in_windows``) is half-open
   ``[onset + t0, onset + t1)`` as DESIGN.md defines. They differ only for a spike exactly on
   ``onset + t1`` (a float tie: never in the simulator's continuous times, possible in real data
   at 1/30 kHz sample resolution). ``test_right_window_edge_disagreement`` pins this down.
7. AllenSDK orders ``units`` by probe, then vertical and horizontal position of the peak channel;
   our reader keeps the file's order. Same ids, other order: select by id, never by position.
8. Presentations overlapping ``invalid_times`` tagged ``stimulus`` become
   ``invalid_presentation``; our reader now does the same (``test_invalid_times_masking``).
9. ``presentationwise_spike_counts`` returns ``uint16`` by default (overflows past 65535), and
   warns whenever a window reaches past the next onset.
10. ``Presentations.from_nwb`` sorts by ``start_time`` with pandas' default (not stable) sort;
    ours is stable. Ids could differ only for presentations with identical start times.
11. Through ``EcephysProjectCache`` the units' ``ecephys_structure_acronym`` comes from the
    warehouse's ``channels.csv``; ours always from the NWB ``location`` column. Whether the two
    ever differ for released sessions is unchecked (no warehouse access here).
12. AllenSDK applies ``quality == "good"`` only together with its channel-validity filter
    (``filter_by_validity``); our ``UnitFilter`` switches the two independently.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

pytestmark = [
    pytest.mark.allen,
    # allensdk 2.16's argschema/marshmallow schemas warn on import; not ours to fix
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

N_IMAGES, N_REPEATS, SEED = 8, 6, 11
WINDOWS = [(0.0, 0.25), (0.05, 0.3), (-0.1, 0.0)]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """A small Allen-format session written in this env (gabors complete, 3 scene blocks)."""
    from meireport.sources import simulate_session

    return simulate_session(
        tmp_path_factory.mktemp("allen_cache"),
        seed=SEED,
        n_images=N_IMAGES,
        n_repeats=N_REPEATS,
        allensdk_format=True,
    )


def _channel_columns(nwb_path):
    """What ``EcephysProjectCache`` passes as ``external_channel_columns`` (from channels.csv)."""
    import pynwb

    with pynwb.NWBHDF5IO(str(nwb_path), "r") as io:
        el = io.read().electrodes.to_dataframe()
    acr = el["location"].map(lambda v: np.nan if v in ("None", "") else v)
    return pd.DataFrame({"ecephys_structure_acronym": acr}, index=el.index)


@pytest.fixture(scope="module")
def allen(sim):
    """AllenSDK's reader on the fixture, with channel info passed as the cache would."""
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession

    channels = _channel_columns(sim.nwb_path)
    return EcephysSession.from_nwb_path(
        str(sim.nwb_path), api_kwargs={"external_channel_columns": lambda: channels}
    )


@pytest.fixture(scope="module")
def ours(sim):
    from meireport.sources import open_session

    with open_session(sim.cache_dir, sim.session_id) as s:
        yield s


def test_fixture_really_is_read_by_allensdk(allen, sim):
    import allensdk

    assert allensdk.__version__ == "2.16.2"
    assert allen.ecephys_session_id == sim.session_id
    assert set(allen.probes["description"]) == {"probeA", "probeB"}


def test_unit_ids_after_default_filter(allen, ours, sim):
    a_ids, o_ids = allen.units.index.to_numpy(), ours.units.index.to_numpy()
    assert len(a_ids) == len(set(a_ids))
    assert sorted(a_ids.tolist()) == sorted(o_ids.tolist())
    # the simulator's QC failures ("poor" units) are exactly the units both drop
    truth = sim.truth
    poor = {int(u) for u, k in zip(truth.unit_id, truth.kind, strict=True) if k == "poor"}
    assert set(ours.all_units.index) - set(o_ids) == poor
    # quirk 7: AllenSDK sorts units by probe, vertical, horizontal position; we keep file order
    probe_name = allen.probes["description"]
    ch = ours.channels
    key = pd.DataFrame(
        {
            "probe": ours.units["probe_id"].map(probe_name).to_numpy(),
            "v": ours.units["peak_channel_id"].map(ch["probe_vertical_position"]).to_numpy(),
            "h": ours.units["peak_channel_id"].map(ch["probe_horizontal_position"]).to_numpy(),
        },
        index=ours.units.index,
    )
    resorted = key.sort_values(["probe", "v", "h"], kind="stable").index.to_numpy()
    assert np.array_equal(resorted, a_ids)


def test_filter_settings_agree(sim):
    """A looser AllenSDK filter and the same UnitFilter keep the same units."""
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession

    from meireport.sources import UnitFilter, open_session

    kw = dict(amplitude_cutoff_maximum=np.inf, presence_ratio_minimum=-np.inf)
    a = EcephysSession.from_nwb_path(str(sim.nwb_path), api_kwargs=kw)
    uf = UnitFilter(amplitude_cutoff_max=None, presence_ratio_min=None)
    with open_session(sim.nwb_path, unit_filter=uf) as s, open_session(sim.nwb_path) as d:
        assert sorted(a.units.index.tolist()) == sorted(s.units.index.tolist())
        assert len(s.units) > len(d.units)  # looser than the default


def test_structure_acronyms(allen, ours, sim):
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession

    ids = ours.units.index
    ecephys = allen.units.loc[ids, "ecephys_structure_acronym"]
    assert ecephys.tolist() == ours.units["ecephys_structure_acronym"].tolist()
    # AllenSDK's own reading of the NWB location column agrees too
    assert allen.units.loc[ids, "structure_acronym"].tolist() == ecephys.tolist()
    in_brain = {a for a in allen.structure_acronyms if isinstance(a, str)}
    assert sorted(in_brain) == ours.areas == ["CA1", "VISam", "VISp"]
    # quirk 4: from a bare path (no api_kwargs) the column is missing
    bare = EcephysSession.from_nwb_path(str(sim.nwb_path))
    assert "ecephys_structure_acronym" not in bare.units
    assert "structure_acronym" in bare.units


def test_presentation_ids_and_names(allen, ours):
    a = allen.stimulus_presentations
    o = ours.stimulus_presentations
    assert a.index.tolist() == o.index.tolist()
    assert a["stimulus_name"].tolist() == o["stimulus_name"].tolist()
    assert np.array_equal(a["start_time"].to_numpy(float), o["start_time"].to_numpy(float))
    assert np.array_equal(a["stop_time"].to_numpy(float), o["stop_time"].to_numpy(float))
    assert sorted(allen.stimulus_names) == ours.stimulus_names


NUMERIC = {
    "natural_scenes": ["start_time", "stop_time", "duration", "stimulus_block", "frame"],
    "gabors": [
        "start_time",
        "stop_time",
        "duration",
        "stimulus_block",
        "orientation",
        "x_position",
        "y_position",
        "spatial_frequency",
        "temporal_frequency",
        "contrast",
    ],
}
TEXT = {"natural_scenes": ["stimulus_name"], "gabors": ["stimulus_name", "size", "phase"]}


@pytest.mark.parametrize("name", ["natural_scenes", "gabors"])
def test_stimulus_tables(allen, ours, name):
    a = allen.get_stimulus_table([name])
    o = ours.stimulus_table(name)
    assert a.index.name == o.index.name == "stimulus_presentation_id"
    assert a.index.tolist() == o.index.tolist()
    assert len(o) == (3 * 81 * 15 if name == "gabors" else (N_IMAGES + 1) * N_REPEATS)
    for col in NUMERIC[name]:
        assert np.array_equal(a[col].to_numpy(float), o[col].to_numpy(float)), col
    for col in TEXT[name]:
        assert a[col].astype(str).tolist() == o[col].astype(str).tolist(), col
    # AllenSDK keeps stimulus_condition_id; we drop stimulus_index as it does
    extra = set(o.columns) - set(a.columns)
    assert extra <= {"stimulus_index"}, extra


def _allen_counts(allen, table, ids, window):
    import warnings

    with warnings.catch_warnings():
        # AllenSDK warns whenever a window reaches past the next onset (presentations are
        # contiguous, so any window longer than ~250 ms does); harmless here
        warnings.filterwarnings("ignore", message="You've specified some overlapping")
        da = allen.presentationwise_spike_counts(
            bin_edges=np.array(window, dtype=float),
            stimulus_presentation_ids=table.index.to_numpy(),
            unit_ids=ids,
            dtype=np.int64,
        )
    assert da.dims == ("stimulus_presentation_id", "time_relative_to_stimulus_onset", "unit_id")
    return pd.DataFrame(
        da.values[:, 0, :],
        index=pd.Index(da["stimulus_presentation_id"].values, name="stimulus_presentation_id"),
        columns=pd.Index(da["unit_id"].values, name="unit_id"),
    )


def _ties_on_right_edge(ours, ids, starts, t1):
    """Spikes lying exactly on ``onset + t1`` (the only place the two rules can differ)."""
    edges = starts + t1
    return sum(int(np.isin(ours.spike_times[int(u)], edges).sum()) for u in ids)


@pytest.mark.parametrize("name", ["natural_scenes", "gabors"])
@pytest.mark.parametrize("window", WINDOWS)
def test_spike_counts_match_presentationwise_spike_counts(allen, ours, name, window):
    from meireport.extract import spike_counts

    table = ours.stimulus_table(name)
    ids = ours.units.index.to_numpy()
    mine = spike_counts(ours, name, window=window, unit_ids=ids)
    theirs = _allen_counts(allen, table, ids, window)
    assert theirs.index.tolist() == mine.index.tolist()
    assert theirs.columns.tolist() == mine.columns.tolist()
    starts = table["start_time"].to_numpy(float)
    assert _ties_on_right_edge(ours, ids, starts, window[1]) == 0
    assert mine.to_numpy().sum() > 0
    assert np.array_equal(theirs.to_numpy(), mine.to_numpy())


def test_right_window_edge_disagreement(allen, ours):
    """Quirk 6: AllenSDK counts a spike at exactly onset + t1, we do not (half-open window)."""
    from meireport.extract import spike_counts

    table = ours.stimulus_table("natural_scenes")
    starts = table["start_time"].to_numpy(float)
    ids = ours.units.index.to_numpy()
    # pick a window end that lands exactly (in float) on a real spike of some presentation
    t1 = None
    for u in ids:
        st = ours.spike_times[int(u)]
        for onset in starts:
            inside = st[(st > onset + 0.05) & (st < onset + 0.25)]
            for spike in inside:
                if onset + (spike - onset) == spike:
                    t1 = spike - onset
                    break
            if t1 is not None:
                break
        if t1 is not None:
            break
    assert t1 is not None
    window = (0.0, float(t1))
    mine = spike_counts(ours, "natural_scenes", window=window, unit_ids=ids)
    theirs = _allen_counts(allen, table, ids, window)
    ties = _ties_on_right_edge(ours, ids, starts, window[1])
    assert ties >= 1
    diff = theirs.to_numpy() - mine.to_numpy()
    assert diff.min() == 0 and int(diff.sum()) == ties


def test_invalid_times_masking(sim, tmp_path):
    """Quirk 8: presentations overlapping a ``stimulus`` invalid interval drop out in both."""
    import pynwb
    from allensdk.brain_observatory.ecephys.ecephys_session import EcephysSession

    from meireport.sources import open_session

    path = tmp_path / sim.nwb_path.name
    shutil.copyfile(sim.nwb_path, path)
    with open_session(path) as s:
        ns = s.stimulus_table("natural_scenes")
    t0, t1 = float(ns["start_time"].iloc[3]), float(ns["stop_time"].iloc[5])
    with pynwb.NWBHDF5IO(str(path), "a") as io:
        nwb = io.read()
        nwb.add_invalid_time_interval(start_time=t0, stop_time=t1, tags=["stimulus"])
        nwb.add_invalid_time_interval(start_time=1.0, stop_time=2.0, tags=["probeA"])
        io.write(nwb)
    a = EcephysSession.from_nwb_path(str(path))
    with open_session(path) as s:
        o = s.stimulus_table("natural_scenes")  # first: read from its own table only
        assert "stimulus_presentations" not in s.__dict__
        o_all = s.stimulus_presentations
        assert a.stimulus_presentations["stimulus_name"].tolist() == o_all["stimulus_name"].tolist()
        ta = a.get_stimulus_table(["natural_scenes"])
        assert o.index.tolist() == ta.index.tolist()
        # rows 3-5 overlap; contiguous presentations share an edge with them, and the overlap
        # test is closed (touching counts), so rows 2 and 6 go too
        assert set(ns.index) - set(o.index) == set(ns.index[2:7])
        assert "invalid_presentation" in s.stimulus_names


# -- fetch: offline failure, no hang, complete caches need no network --------------------------
def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bind, learn the port, close: nothing listens there now
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_fails_fast_and_in_one_line_when_unreachable(tmp_path):
    import time

    from meireport.errors import MeireportError
    from meireport.sources.fetch import fetch_session

    t0 = time.perf_counter()
    with pytest.raises(MeireportError) as e:
        fetch_session(
            798911424,
            tmp_path / "c",
            timeout_s=2.0,
            host="127.0.0.1",
            port=_closed_port(),
            log=None,
        )
    msg = str(e.value)
    assert time.perf_counter() - t0 < 5
    assert "\n" not in msg and msg.startswith("fetch: cannot reach")
    assert "session_798911424/session_798911424.nwb" in msg and "sessions.csv" in msg
    assert not (tmp_path / "c").exists()  # nothing written


def test_fetch_does_not_hang_when_the_resolver_hangs(tmp_path, monkeypatch):
    import socket
    import time

    from meireport.errors import MeireportError
    from meireport.sources import fetch

    def hang(*_args, **_kwargs):
        time.sleep(30)

    monkeypatch.setattr(fetch.socket, "create_connection", hang)
    assert socket.create_connection is hang
    t0 = time.perf_counter()
    with pytest.raises(MeireportError, match=r"^fetch: no answer from .* within 1 s"):
        fetch.fetch_session(798911424, tmp_path / "c", timeout_s=1.0, log=None)
    assert time.perf_counter() - t0 < 3


def test_warehouse_probe_is_bounded():
    """Against the real warehouse address: answers or fails in one line, within the timeout."""
    import time

    from meireport.errors import MeireportError
    from meireport.sources.fetch import check_warehouse

    t0 = time.perf_counter()
    try:
        check_warehouse(timeout_s=2.0)
    except MeireportError as e:
        assert "\n" not in str(e)
    assert time.perf_counter() - t0 < 3


def test_fetch_cli_parser_and_core_env_message(tmp_path, monkeypatch):
    import argparse

    from meireport.errors import MeireportError
    from meireport.sources import fetch

    p = argparse.ArgumentParser(prog="meireport")
    fetch.add_fetch_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(
        ["fetch", "--session", "798911424", "--cache", str(tmp_path), "--timeout", "1"]
    )
    monkeypatch.setattr(fetch, "_allensdk_available", lambda: False)  # as in the core env
    with pytest.raises(MeireportError, match=r"^fetch: needs allensdk .*nox -s allen"):
        args.func(args)
    with pytest.raises(MeireportError, match="^session: expected a positive integer"):
        fetch.fetch_session(-3, tmp_path)


def test_templates_only_fetch_fails_in_one_line_offline_and_needs_no_network_when_complete(
        sim, tmp_path, monkeypatch):
    """``fetch --templates-only`` (for remote sources): no session, offline one line, no writes."""
    import argparse
    import shutil
    import time

    from meireport.errors import MeireportError
    from meireport.sources import fetch

    t0 = time.perf_counter()
    with pytest.raises(MeireportError) as e:
        fetch.fetch_templates(tmp_path / "c", timeout_s=2.0, host="127.0.0.1",
                              port=_closed_port(), log=None)
    msg = str(e.value)
    assert time.perf_counter() - t0 < 5
    assert "\n" not in msg and msg.startswith("fetch: cannot reach")
    assert msg.endswith(f"118 of 118 natural scene templates missing in "
                        f"{tmp_path / 'c' / 'natural_scene_templates'}")
    assert not (tmp_path / "c").exists()
    # a folder that holds them all: nothing fetched, no network touched
    full = tmp_path / "full"
    shutil.copytree(sim.templates_dir, full / "natural_scene_templates")
    monkeypatch.setattr(fetch, "check_warehouse", lambda *a, **k: pytest.fail("network used"))
    n = len(list(sim.templates_dir.glob("natural_scene_*.tiff")))
    assert fetch.fetch_templates(full, n_scenes=n, log=None) == []
    p = argparse.ArgumentParser(prog="meireport")
    fetch.add_fetch_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["fetch", "--templates-only", "--cache", str(tmp_path / "x")])
    assert args.templates_only and args.session is None
    no_session = p.parse_args(["fetch", "--cache", str(tmp_path / "x")])
    with pytest.raises(MeireportError, match=r"^fetch: --session is required"):
        no_session.func(no_session)


def test_complete_cache_needs_no_network(sim, tmp_path, monkeypatch):
    """Offline use: a cache holding the session works for our reader and for fetch, no network."""
    import socket

    from meireport.errors import MeireportError
    from meireport.extract import spike_counts
    from meireport.sources import open_session
    from meireport.sources.fetch import ALLEN_TABLES, MANIFEST, cache_status, fetch_session

    def no_network(*_args, **_kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    cache = tmp_path / "cache"
    sdir = cache / f"session_{sim.session_id}"
    sdir.mkdir(parents=True)
    shutil.copyfile(sim.nwb_path, sdir / sim.nwb_path.name)
    status = cache_status(cache, sim.session_id, n_scenes=N_IMAGES)
    assert status.missing_for_reader == [
        f"natural_scene_templates/natural_scene_{k}.tiff" for k in range(N_IMAGES)
    ]
    assert f"{N_IMAGES} of natural_scene_templates/natural_scene_<k>.tiff" in status.describe()
    with open_session(cache) as s:  # counting needs only the NWB
        assert spike_counts(s, "natural_scenes").shape[0] == (N_IMAGES + 1) * N_REPEATS
        with pytest.raises(MeireportError, match="natural_scene_templates"):
            s.model_images([0])
    shutil.copytree(sim.templates_dir, cache / "natural_scene_templates")
    for name in (MANIFEST, *ALLEN_TABLES):
        (cache / name).write_text("placeholder\n")
    assert cache_status(cache, sim.session_id, n_scenes=N_IMAGES).complete
    done = fetch_session(sim.session_id, cache, n_scenes=N_IMAGES, log=None)
    assert done.complete and done.downloaded == []
    with open_session(cache) as s:
        assert s.model_images([0, -1]).shape == (2, 60, 96)
