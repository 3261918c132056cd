"""``model.kind: shared``: one core for the pooled units of every session of a run.

A tiny two-session simulated run (``source.n_sessions: 2``): the shared core's task runs once
every session is selected, pools both sessions' reliable units and every reported neuron, and
each neuron's pages read its own readout of that core.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from meireport.artifacts import load_npz
from meireport.errors import MeireportError
from meireport.models import ResponseData, load_model, pool_responses
from meireport.report.params import parse_params
from meireport.report.run import SHARED_TASK_ID, run

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _params(tmp_path: Path, **model) -> Path:
    p = yaml.safe_load((ROOT / "params" / "tiny.yaml").read_text())
    p["source"]["n_sessions"] = 2
    p["model"] = dict(p["model"], kind="shared", **model)
    p["limits"] = {"enabled": False}
    f = tmp_path / "shared.yaml"
    f.write_text(yaml.safe_dump(p))
    return f


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shared")
    out = tmp / "run"
    return tmp, out, run(_params(tmp), out=out, progress=False)


def _reported(out: Path) -> dict[int, list[int]]:
    return {int(d.name): pd.read_csv(d / "summary.csv")["unit_id"].astype(int).tolist()
            for d in sorted((out / "results").iterdir()) if (d / "summary.csv").is_file()}


def test_one_core_serves_every_session_and_each_neuron_reads_its_own_readout(shared_run):
    _, out, res = shared_run
    assert not res.failed, [(r.task_id, r.error) for r in res.failed]
    (task,) = [r for r in res.results if r.stage == "shared"]
    assert task.task_id == SHARED_TASK_ID and task.status == "ok"
    reported = _reported(out)
    assert sorted(reported) == [700000001, 700000002] and all(reported.values())
    info = json.loads((out / "results" / "shared" / "shared.json").read_text())
    assert info["sessions"] == [700000001, 700000002]
    assert info["n_units"] == sum(info["units_per_session"].values())
    assert min(info["units_per_session"].values()) > 0 and info["seconds_per_unit"] > 0
    whole = load_model(out / "results" / "shared" / "model.pt")
    units = pd.read_csv(out / "results" / "shared" / "shared_units.csv").set_index("unit_id")
    assert whole.unit_ids.tolist() == units.index.tolist()
    sel = {s: pd.read_csv(out / "results" / str(s) / "selection.csv") for s in reported}
    for s, table in sel.items():  # the pool: every unit over the floor, and the reported ones
        over = set(table.loc[table["oracle_corr"] >= 0.2, "unit_id"]) | set(reported[s])
        assert set(units.index[units["session_id"] == s]) == over
    for s, ids in reported.items():
        images = load_npz(out / "results" / str(s) / "images.npz")["images"]
        for u in ids:
            one = load_model(out / "results" / str(s) / str(u) / "model.pt")
            col = int(np.flatnonzero(whole.unit_ids == u)[0])
            np.testing.assert_allclose(one.predict(images), whole.predict(images)[:, [col]],
                                       rtol=1e-4, atol=1e-5)
            tj = json.loads((out / "results" / str(s) / str(u) / "train.json").read_text())
            assert tj["model_kind"] == "shared" and tj["shared_sessions"] == 2
            assert tj["shared_units"] == info["n_units"]
            assert tj["test_corr"] == pytest.approx(units.loc[u, "test_corr"])
            assert tj["train_seconds"] == pytest.approx(info["seconds_per_unit"])
            assert (out / "results" / str(s) / str(u) / "mei.npy").is_file()


def test_the_reported_neurons_meis_come_from_one_batch_on_the_shared_core(shared_run):
    from meireport.mei import UnitModel, generate_mei
    from meireport.report.params import MEIParams
    from meireport.report.run import SHARED_MEI_TASK_ID
    from meireport.report.stages import load_mei_result, shared_mei_dir

    _, out, res = shared_run
    (task,) = [r for r in res.results if r.stage == "shared_mei"]
    assert task.task_id == SHARED_MEI_TASK_ID and task.status == "ok"
    p = json.loads((out / "params.json").read_text())
    shared = out / "results" / "shared" / "model.pt"
    batch = shared_mei_dir(shared, p["mei"])
    info = json.loads((batch / "batch.json").read_text())
    reported = _reported(out)
    assert info["n_units"] == sum(len(v) for v in reported.values()) and info["seconds"] > 0
    cfg = MEIParams.from_dict(p["mei"]).config()
    for s, ids in reported.items():
        images = load_npz(out / "results" / str(s) / "images.npz")
        for u in ids:
            unit = out / "results" / str(s) / str(u)
            got, _ = load_mei_result(batch / f"{u}.npz", cfg)
            page, _ = load_mei_result(unit / "mei_starts.npz", cfg)
            np.testing.assert_array_equal(page.mei, got.mei)  # the page shows the batch's MEI
            one = load_model(unit / "model.pt")  # the unit's readout, synthesised alone
            train = images["images"][np.isin(images["frames"], np.asarray(one.split.train))]
            alone = generate_mei(UnitModel(one.model, 0), train.astype(np.float64), cfg)
            np.testing.assert_allclose(got.mei, alone.mei, atol=1e-4)
            assert got.response == pytest.approx(alone.response, rel=1e-4, abs=1e-5)


def test_a_rerun_is_cached_and_a_new_floor_refits_the_core(shared_run):
    tmp, out, _ = shared_run
    again = run(_params(tmp), out=out, progress=False)
    assert not again.executed and not again.failed
    before = json.loads((out / "results" / "shared" / "shared.json").read_text())["n_units"]
    tight = run(_params(tmp, shared_floor=0.95), out=out, progress=False)
    assert not tight.failed, [(r.task_id, r.error) for r in tight.failed]
    info = json.loads((out / "results" / "shared" / "shared.json").read_text())
    reported = _reported(out)
    assert info["n_units"] == sum(len(v) for v in reported.values()) < before  # reported only
    redone = {r.stage for r in tight.executed}
    assert {"shared", "shared_mei", "train", "mei", "gabor"} <= redone and "extract" not in redone


def test_shared_params_and_pooling_fail_in_one_line():
    with pytest.raises(MeireportError, match=r"^source: give n_sessions or session_ids, not bo"):
        parse_params({"source": {"kind": "simulated", "n_sessions": 2, "session_ids": [1]}})
    with pytest.raises(MeireportError, match=r"^source: n_sessions is for kind 'simulated'"):
        parse_params({"source": {"kind": "nwb", "path": "/x.nwb", "n_sessions": 2}})
    with pytest.raises(MeireportError, match=r"^model.kind: "):
        parse_params({"source": {"kind": "simulated"}, "model": {"kind": "pooled"}})
    p = parse_params({"source": {"kind": "simulated", "n_sessions": 3}})
    assert p.source.session_ids == [700000001, 700000002, 700000003]
    rng = np.random.default_rng(0)
    a = ResponseData(rng.random((4, 6, 8)), np.ones((2, 4, 3)), [1, 2], np.arange(4))
    b = ResponseData(rng.random((4, 6, 8)), np.ones((1, 4, 3)), [3], np.arange(4))
    with pytest.raises(MeireportError, match=r"^datas\[1\]: its natural scenes are not those"):
        pool_responses([a, b])
    with pytest.raises(MeireportError, match=r"^unit_ids: \[1\] occur in two sessions"):
        pool_responses([a, ResponseData(a.images, np.ones((1, 4, 2)), [1], np.arange(4))])


def test_fine_tuned_neurons_keep_the_shared_core_and_fit_their_own_models(shared_run):
    """``model.finetune``: the core is the shared fit's (its task is cached: the fine-tune
    settings are not the core's), each reported neuron's model is its readout fitted further on
    its own responses, and its MEI is synthesised on that model (no batch on the shared core)."""
    from meireport.report.stages import batched_mei_file

    tmp, out, _ = shared_run
    res = run(_params(tmp), out=out, progress=False)  # the default floor's core
    assert not res.failed, [(r.task_id, r.error) for r in res.failed]
    tuned = run(_params(tmp, finetune=True), out=out, progress=False)
    assert not tuned.failed, [(r.task_id, r.error) for r in tuned.failed]
    stages = {r.stage: r.status for r in tuned.results}
    assert stages["shared"] == "cached" and "shared_mei" not in stages
    info = json.loads((out / "results" / "shared" / "shared.json").read_text())
    p = json.loads((out / "params.json").read_text())
    for s, ids in _reported(out).items():
        for u in ids:
            unit = out / "results" / str(s) / str(u)
            tj = json.loads((unit / "train.json").read_text())
            assert tj["model_kind"] == "shared" and tj["finetuned"] is True
            assert tj["shared_units"] == info["n_units"]
            assert tj["train_seconds"] > info["seconds_per_unit"]  # its share plus its own fit
            assert batched_mei_file(unit.parent, unit, u, p["mei"]) is None
            assert (unit / "mei.npy").is_file()
