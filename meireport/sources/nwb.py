"""Allen-format NWB session reader: units, stimulus tables and spike times, lazily, with h5py.

Only the groups that are asked for are read: a real session file is 2-3 GB, mostly LFP and
waveforms that this reader never touches. The file is opened read-only and nothing is written.
Tables and numbering follow AllenSDK 2.16's ``EcephysSession``:

- ``units`` is filtered as AllenSDK filters (``quality == "good"``, ``amplitude_cutoff <= 0.1``,
  ``presence_ratio >= 0.95``, ``isi_violations <= 0.5``, peak channel valid and inside the brain);
- ``stimulus_presentation_id`` is the row position once every ``intervals/*_presentations``
  table is concatenated and sorted by ``start_time``;
- a presentation overlapping an ``invalid_times`` interval tagged ``stimulus`` keeps its id and
  times but is renamed ``invalid_presentation`` (parameters blanked), so no stimulus table holds it.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import h5py
import numpy as np
import pandas as pd

from meireport.errors import MeireportError
from meireport.sources.cache import check_path, one_line, resolve_session, template_path
from meireport.stimuli import ScreenGeometry

__all__ = ["UnitFilter", "Session", "SpikeTimes", "open_session", "open_remote"]

_ELECTRODES = "general/extracellular_ephys/electrodes"
_SKIP_INTERVAL_COLUMNS = {"tags", "timeseries", "tags_index", "timeseries_index"}
_NOT_IN_BRAIN = {"None", "", "nan"}
_INVALID_TIMES = "intervals/invalid_times"
INVALID_PRESENTATION = "invalid_presentation"


@dataclass(frozen=True)
class UnitFilter:
    """Which units count as well isolated; the defaults are AllenSDK's.

    Set a field to ``None`` to switch that criterion off; :meth:`none` switches all off.

    Examples
    --------
    >>> UnitFilter().amplitude_cutoff_max
    0.1
    >>> UnitFilter.none().quality is None
    True
    """

    quality: str | None = "good"
    amplitude_cutoff_max: float | None = 0.1
    presence_ratio_min: float | None = 0.95
    isi_violations_max: float | None = 0.5
    valid_channel: bool = True
    in_brain: bool = True

    @classmethod
    def none(cls) -> UnitFilter:
        """A filter that keeps every unit."""
        return cls(None, None, None, None, False, False)

    def with_(self, **changes) -> UnitFilter:
        """Copy with some criteria changed."""
        return replace(self, **changes)

    def mask(self, units: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows of an (unfiltered) units table that pass."""
        keep = np.ones(len(units), dtype=bool)
        if self.quality is not None and "quality" in units:
            keep &= (units["quality"] == self.quality).to_numpy()
        for col, bound, op in (
            ("amplitude_cutoff", self.amplitude_cutoff_max, np.less_equal),
            ("presence_ratio", self.presence_ratio_min, np.greater_equal),
            ("isi_violations", self.isi_violations_max, np.less_equal),
        ):
            if bound is not None and col in units:
                keep &= op(units[col].to_numpy(dtype=float), bound)
        if self.valid_channel and "peak_channel_valid" in units:
            keep &= units["peak_channel_valid"].to_numpy(dtype=bool)
        if self.in_brain:
            keep &= units["ecephys_structure_acronym"].notna().to_numpy()
        return keep


def _decode(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in ("S", "O"):
        return np.array(
            [v.decode() if isinstance(v, bytes) else v for v in values.tolist()], dtype=object
        )
    return values


def _read_dataset(ds: h5py.Dataset, rows: slice = slice(None)) -> np.ndarray:
    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[rows], dtype=object)
    return _decode(np.asarray(ds[rows]))


def _table_columns(group: h5py.Group, skip: set[str] = frozenset(),
                   rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """Scalar (1-D, not ragged, not reference) columns of an NWB DynamicTable group (``rows``)."""
    names = [
        n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("colnames", [])
    ]
    ragged = {n[: -len("_index")] for n in group if n.endswith("_index")}
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name in skip or name in ragged or name not in group:
            continue
        ds = group[name]
        if (
            not isinstance(ds, h5py.Dataset)
            or ds.ndim != 1
            or ds.dtype.kind == "O"
            and (h5py.check_string_dtype(ds.dtype) is None)
        ):
            continue
        out[name] = _read_dataset(ds, rows)
    return out


class SpikeTimes(Mapping):
    """Lazy mapping ``unit_id -> sorted float64 array of spike times (s)``.

    Each unit's slice of the NWB ``units/spike_times`` vector is read on first access only.
    """

    def __init__(self, group: h5py.Group, row_of_unit: dict[int, int], session_id: int):
        self._data = group["spike_times"]
        self._end = np.asarray(group["spike_times_index"][()], dtype=np.int64)
        self._row = row_of_unit
        self._session_id = session_id
        self._cache: dict[int, np.ndarray] = {}

    def __getitem__(self, unit_id) -> np.ndarray:
        uid = int(unit_id)
        if uid not in self._row:
            raise KeyError(f"unit_ids: {unit_id} not in session {self._session_id}")
        if uid not in self._cache:
            r = self._row[uid]
            start = int(self._end[r - 1]) if r > 0 else 0
            t = np.asarray(self._data[start : int(self._end[r])], dtype=np.float64)
            if t.size > 1 and np.any(np.diff(t) < 0):
                t = np.sort(t)
            self._cache[uid] = t
        return self._cache[uid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._row)

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, unit_id) -> bool:
        try:
            return int(unit_id) in self._row
        except (TypeError, ValueError):
            return False

    def n_spikes(self, unit_id) -> int:
        """Number of spikes of a unit without reading its spike times."""
        r = self._row[int(unit_id)]
        return int(self._end[r] - (self._end[r - 1] if r > 0 else 0))


def _is_empty(col: pd.Series) -> bool:
    """Whether a column holds nothing: every value missing, or every value's text ``""``.

    A numeric column with a value is not empty (its text is never ``""``): only other columns
    are turned into text.

    Examples
    --------
    >>> [_is_empty(pd.Series(v)) for v in ([np.nan, np.nan], ["", ""], ["", "a"], [0.0, np.nan])]
    [True, True, False, False]
    """
    if col.isna().all():
        return True
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return False
    return bool((col.astype(str) == "").all())


def _numeric_or_object(col: pd.Series) -> pd.Series:
    """Convert an object column to float when every non-empty value is a number."""
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        return col
    vals = col.astype(object).replace("", np.nan)
    try:
        return pd.to_numeric(vals, errors="raise")
    except (ValueError, TypeError):
        return col


def _presentation_frame(key: str, grp: h5py.Group, rows: slice = slice(None)) -> pd.DataFrame:
    """One ``*_presentations`` table (``rows`` of it) as the whole-session table stacks it."""
    df = pd.DataFrame(_table_columns(grp, skip=_SKIP_INTERVAL_COLUMNS, rows=rows))
    if "stimulus_name" not in df:
        df["stimulus_name"] = key.removesuffix("_presentations")
    return df.replace({"N/A": ""})


class Session:
    """One Allen-format recording session, read lazily from its NWB file.

    Use :func:`open_session` to create one. Use it as a context manager, or call
    :meth:`close`, to release the file.

    Attributes
    ----------
    session_id : int
    path : Path or None
        The local NWB file (None for a remote one).
    remote : RemoteFile or None
        The remote file object a remote session reads by byte ranges (see :func:`open_remote`).
    where : str
        The local path or the URL, as error messages name it.
    templates_dir : Path or None
        Folder holding ``natural_scene_<k>.tiff``.
    unit_filter : UnitFilter
    """

    def __init__(
        self,
        nwb_path: Path | io.IOBase,
        templates_dir: Path | None = None,
        unit_filter: UnitFilter | None = None,
        session_id: int | None = None,
    ):
        self._file = None
        self.remote = nwb_path if isinstance(nwb_path, io.IOBase) else None
        self.path = None if self.remote is not None else Path(nwb_path)
        self.where = getattr(self.remote, "url", None) or str(self.path)
        self.templates_dir = templates_dir
        self.unit_filter = unit_filter if unit_filter is not None else UnitFilter()
        self._file = self._open_file()
        if "units" not in self._file or "spike_times" not in self._file["units"]:
            self.close()
            raise MeireportError(
                f"path: {self.where} has no units table with spike_times; "
                "expected an Allen-format NWB"
            )
        self.session_id = session_id if session_id is not None else self._read_session_id()

    def _open_file(self) -> h5py.File:
        """Open the local file or the remote file object read-only; one line if it fails."""
        if self.remote is not None:
            try:
                return h5py.File(self.remote, "r")
            except OSError as e:
                raise MeireportError(
                    f"path: {self.where} cannot be opened as an NWB (HDF5) file "
                    f"({one_line(e)}); expected an Allen-format .nwb"
                ) from None
        check_path(self.path, "file")
        try:
            hdf5 = h5py.is_hdf5(self.path)
        except OSError as e:
            raise MeireportError(f"path: {self.path} cannot be read ({one_line(e)})") from None
        if not hdf5:
            raise MeireportError(f"path: {self.path} is not an NWB (HDF5) file")
        try:
            return h5py.File(self.path, "r")
        except OSError as e:  # h5py: "Unable to open file (truncated file: eof = ...)"
            reason = one_line(e)
            if "(" in reason and reason.endswith(")"):
                reason = reason[reason.index("(") + 1 : -1]
            raise MeireportError(
                f"path: {self.path} cannot be opened as an NWB (HDF5) file ({reason}); "
                "expected a complete Allen-format .nwb (a download cut short? fetch it again)"
            ) from None

    # -- life cycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close the NWB file."""
        if getattr(self, "_file", None) is not None and self._file.id.valid:
            self._file.close()
        if getattr(self, "remote", None) is not None:
            self.remote.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session({self.session_id}, {self.where})"

    # -- metadata ----------------------------------------------------------------------------
    def _read_session_id(self) -> int:
        ident = self._file.get("identifier")
        if ident is not None:
            text = ident.asstr()[()] if h5py.check_string_dtype(ident.dtype) else ident[()]
            try:
                return int(text)
            except (TypeError, ValueError):
                pass
        stem = PurePosixPath(urlsplit(self.where).path).stem if self.remote else self.path.stem
        digits = stem.removeprefix("session_")
        if digits.isdigit():
            return int(digits)
        ses = re.search(r"_ses-(\d+)", stem)  # DANDI: sub-<specimen>_ses-<session>.nwb
        if ses:
            return int(ses.group(1))
        raise MeireportError(
            f"{self.where}: cannot tell the session id (identifier is not an integer, "
            "file is not named session_<id>.nwb); pass session_id"
        )

    @cached_property
    def geometry(self) -> ScreenGeometry:
        """Degree -> pixel mapping; from the file's notes if it carries one, else the default."""
        notes = self._file.get("general/notes")
        if notes is not None:
            try:
                meta = json.loads(notes.asstr()[()])
                return ScreenGeometry.from_dict(meta["meireport_geometry"])
            except (ValueError, KeyError, TypeError):
                pass
        return ScreenGeometry()

    # -- units -------------------------------------------------------------------------------
    @cached_property
    def channels(self) -> pd.DataFrame:
        """Electrodes table: ``ecephys_structure_acronym`` (NaN outside the brain), validity."""
        if _ELECTRODES not in self._file:
            raise MeireportError(f"{self.where} has no electrodes table ({_ELECTRODES})")
        grp = self._file[_ELECTRODES]
        cols = _table_columns(grp, skip={"group"})
        df = pd.DataFrame(cols, index=pd.Index(grp["id"][()].astype(np.int64), name="id"))
        loc = df.pop("location") if "location" in df else pd.Series("", index=df.index)
        df.insert(
            0,
            "ecephys_structure_acronym",
            [np.nan if str(v) in _NOT_IN_BRAIN else str(v) for v in loc],
        )
        if "valid_data" in df:
            df["valid_data"] = df["valid_data"].astype(bool)
        return df

    @cached_property
    def all_units(self) -> pd.DataFrame:
        """Every unit of the file with its metrics and peak-channel area, before filtering."""
        grp = self._file["units"]
        cols = _table_columns(grp, skip={"spike_times", "spike_amplitudes", "waveform_mean"})
        ids = grp["id"][()].astype(np.int64)
        df = pd.DataFrame(cols, index=pd.Index(ids, name="unit_id"))
        if "peak_channel_id" in df:
            ch = self.channels
            peak = df["peak_channel_id"].astype(np.int64)
            df["ecephys_structure_acronym"] = peak.map(ch["ecephys_structure_acronym"]).to_numpy()
            valid = ch["valid_data"] if "valid_data" in ch else pd.Series(True, index=ch.index)
            df["peak_channel_valid"] = peak.map(valid).fillna(False).astype(bool).to_numpy()
            if "probe_id" in ch:
                df["probe_id"] = peak.map(ch["probe_id"]).to_numpy()
        else:
            df["ecephys_structure_acronym"] = np.nan
            df["peak_channel_valid"] = False
        df["ecephys_structure_acronym"] = df["ecephys_structure_acronym"].astype(object)
        return df

    @cached_property
    def units(self) -> pd.DataFrame:
        """Units that pass :attr:`unit_filter`, indexed by ``unit_id``."""
        return self.all_units[self.unit_filter.mask(self.all_units)]

    @property
    def areas(self) -> list[str]:
        """Structure acronyms of the filtered units, sorted."""
        return sorted(self.units["ecephys_structure_acronym"].dropna().unique().tolist())

    def unit_ids(self, area: str | None = None) -> np.ndarray:
        """Filtered unit ids, optionally only those in ``area``."""
        u = self.units
        if area is None:
            return u.index.to_numpy()
        if area not in set(u["ecephys_structure_acronym"].dropna()):
            raise MeireportError(
                f"area: '{area}' has no units in session {self.session_id}; "
                f"available: {', '.join(self.areas) or 'none'}"
            )
        return u.index[u["ecephys_structure_acronym"] == area].to_numpy()

    @cached_property
    def spike_times(self) -> SpikeTimes:
        """Mapping ``unit_id -> spike times`` for the filtered units, read lazily."""
        all_ids = self._file["units/id"][()].astype(np.int64)
        row = {int(u): i for i, u in enumerate(all_ids)}
        return SpikeTimes(
            self._file["units"], {int(u): row[int(u)] for u in self.units.index}, self.session_id
        )

    # -- stimuli -----------------------------------------------------------------------------
    @cached_property
    def stimulus_presentations(self) -> pd.DataFrame:
        """All presentations, numbered as AllenSDK numbers them (``stimulus_presentation_id``)."""
        groups = self._presentation_groups()
        if not groups:
            raise MeireportError(f"{self.where} has no intervals/*_presentations tables")
        frames = [_presentation_frame(key, grp) for key, grp in groups]
        table = pd.concat(frames, ignore_index=True, sort=False)
        table = table.sort_values("start_time", kind="stable").reset_index(drop=True)
        table.index = table.index.astype(np.int64)
        table.index.name = "stimulus_presentation_id"
        table = self._mask_invalid_presentations(table)
        return table[sorted(table.columns)]

    def _presentation_groups(self) -> list[tuple[str, h5py.Group]]:
        """The ``intervals/*_presentations`` tables, in the file's order."""
        if "intervals" not in self._file:
            raise MeireportError(f"{self.where} has no intervals (stimulus tables)")
        return [(key, grp) for key, grp in self._file["intervals"].items()
                if key.endswith("_presentations") and isinstance(grp, h5py.Group)]

    def _one_stimulus(self, name: str) -> pd.DataFrame | None:
        """Rows of :attr:`stimulus_presentations` that are ``name``'s, reading only its tables.

        The same rows, index, columns and dtypes as filtering the whole table, which is what
        a report's first count would otherwise build: every other table contributes only its
        start and stop times (the presentations' numbering, the invalid intervals), its
        stimulus names, and one row (what its columns do to the dtypes of a concatenation).
        ``None`` when the whole table is already built, or when no table has ``name`` (the
        caller then builds the whole table and names what is there).
        """
        if "stimulus_presentations" in self.__dict__:
            return None
        groups = self._presentation_groups()
        starts, stops, frames, mine = [], [], [], []
        for key, grp in groups:
            if "start_time" not in grp or "stop_time" not in grp:
                return None
            start = np.asarray(grp["start_time"][()], dtype=np.float64)
            if "stimulus_name" in _table_columns(grp, rows=slice(0, 0)):
                raw = np.asarray(grp["stimulus_name"][()])  # bytes: not decoded to compare
                has = bool(((raw == name.encode()) | (raw == name)).any())
            else:
                has = key.removesuffix("_presentations") == name
            has = has and bool(len(start))
            frames.append(_presentation_frame(key, grp, slice(None) if has or not len(start)
                                              else slice(0, 1)))
            mine.append(np.arange(len(start)) if has else np.arange(0))
            starts.append(start)
            stops.append(np.asarray(grp["stop_time"][()], dtype=np.float64))
        if not any(len(m) for m in mine):
            return None
        start, stop = np.concatenate(starts), np.concatenate(stops)
        pid = np.empty(len(start), dtype=np.int64)
        pid[np.argsort(start, kind="stable")] = np.arange(len(start))
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in starts])[:-1]])
        table = pd.concat(frames, ignore_index=True, sort=False)
        lengths = [len(f) for f in frames]
        keep = np.concatenate([np.arange(n) < len(m) for n, m in zip(lengths, mine, strict=True)])
        ids = np.concatenate([o + m for o, m in zip(offsets, mine, strict=True)])
        table = table[keep]
        table.index = pd.Index(pid[ids], dtype=np.int64, name="stimulus_presentation_id")
        table = table.sort_index(kind="stable")
        positions = ids[np.argsort(pid[ids], kind="stable")]  # of the rows, as now sorted
        table = self._mask_invalid_presentations(table, self._invalid_mask(start, stop),
                                                 positions)
        table = table[sorted(table.columns)]
        return table[table["stimulus_name"] == name]

    def _invalid_mask(self, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Which presentations (by position) overlap a stimulus-tagged invalid interval."""
        bad = np.zeros(len(start), dtype=bool)
        for b0, b1 in self._invalid_stimulus_intervals():
            bad |= np.maximum(start, b0) <= np.minimum(stop, b1)
        return bad

    def _invalid_stimulus_intervals(self) -> np.ndarray:
        """``k x 2`` (start, stop) of the ``invalid_times`` rows tagged ``stimulus``."""
        grp = self._file.get(_INVALID_TIMES)
        if not isinstance(grp, h5py.Group) or "tags" not in grp or "tags_index" not in grp:
            return np.empty((0, 2))
        tags = _read_dataset(grp["tags"])
        ends = np.asarray(grp["tags_index"][()], dtype=np.int64)
        begins = np.concatenate([[0], ends[:-1]])
        rows = [
            i
            for i, (b, e) in enumerate(zip(begins, ends, strict=True))
            if "stimulus" in set(tags[b:e].tolist())
        ]
        start = np.asarray(grp["start_time"][()], dtype=np.float64)
        stop = np.asarray(grp["stop_time"][()], dtype=np.float64)
        return np.column_stack([start[rows], stop[rows]])

    def _mask_invalid_presentations(self, table: pd.DataFrame, session_bad: np.ndarray | None
                                    = None, rows: np.ndarray | None = None) -> pd.DataFrame:
        """Rename presentations that overlap a stimulus-tagged invalid interval, as AllenSDK does.

        AllenSDK 2.16 keeps such a row (same ``stimulus_presentation_id``, start and stop time)
        but names it ``invalid_presentation`` and blanks its parameters, so it drops out of every
        stimulus' table. Intervals overlap when ``max(starts) <= min(stops)`` (touching counts).
        ``table`` is every presentation, or some of them: then ``session_bad`` is the mask of
        every presentation (by position) and ``rows`` the positions of the table's rows.
        """
        if session_bad is None:
            start = table["start_time"].to_numpy(dtype=np.float64)
            stop = table["stop_time"].to_numpy(dtype=np.float64)
            session_bad = bad = self._invalid_mask(start, stop)
        else:
            bad = session_bad[rows]
        if session_bad.any():  # the whole table's columns change type, so do the part's
            table = table.copy()
            params = [c for c in table.columns if c not in ("start_time", "stop_time")]
            for c in params:  # int/bool columns cannot hold NaN
                if not (
                    pd.api.types.is_float_dtype(table[c])
                    or pd.api.types.is_object_dtype(table[c])
                    or pd.api.types.is_string_dtype(table[c])
                ):
                    table[c] = table[c].astype(object)
            table.loc[bad, params] = np.nan
            table.loc[bad, "stimulus_name"] = INVALID_PRESENTATION
        return table

    @property
    def stimulus_names(self) -> list[str]:
        """Names of the stimuli presented in this session."""
        return sorted(self.stimulus_presentations["stimulus_name"].unique().tolist())

    def stimulus_table(self, name: str) -> pd.DataFrame:
        """Presentations of one stimulus, with the columns that apply to it.

        Empty columns are dropped, numeric text becomes float, ``duration`` is added. The table
        is built once per stimulus and a copy is returned, so callers may change it freely.
        """
        cached = self._stimulus_tables.get(name)
        if cached is None:
            cached = self._stimulus_tables[name] = self._build_stimulus_table(name)
        return cached.copy()

    @cached_property
    def _stimulus_tables(self) -> dict[str, pd.DataFrame]:
        return {}

    def _build_stimulus_table(self, name: str) -> pd.DataFrame:
        t = self._one_stimulus(name)
        if t is None:
            sp = self.stimulus_presentations
            if name not in set(sp["stimulus_name"]):
                raise MeireportError(
                    f"stimulus: '{name}' not in session {self.session_id}; "
                    f"available: {', '.join(self.stimulus_names)}"
                )
            t = sp[sp["stimulus_name"] == name]
        t = t.copy()
        empty = [c for c in t if _is_empty(t[c])]
        t = t.drop(columns=empty)
        for c in t.columns:
            t[c] = _numeric_or_object(t[c])
        t["duration"] = t["stop_time"] - t["start_time"]
        front = ["start_time", "stop_time", "duration", "stimulus_name", "stimulus_block"]
        front = [c for c in front if c in t]
        return t[front + [c for c in t.columns if c not in front]]

    def _read_template(self, k: int) -> np.ndarray:
        import tifffile

        if self.templates_dir is None:
            raise MeireportError(
                f"session {self.session_id} has no natural_scene_templates folder beside "
                f"{self.where}; expected <cache>/natural_scene_templates/natural_scene_<k>.tiff"
                " (for a remote session: source.templates)"
            )
        f = template_path(self.templates_dir, k)
        if not f.is_file():
            raise MeireportError(f"natural_scene: {f} does not exist (frame {k})")
        try:
            return np.asarray(tifffile.imread(f))
        except Exception as e:  # noqa: BLE001 - a damaged file in any way: one line naming it
            raise MeireportError(
                f"natural_scene: {f} cannot be read as a TIFF image ({one_line(e)}; frame {k})"
            ) from None

    def natural_scene(self, k: int) -> np.ndarray:
        """The ``k``-th natural-scene template as a 2-D float array (raw pixel values, grey)."""
        img = self._read_template(k)
        if img.ndim == 3:
            img = img[..., :3].mean(axis=-1)
        return img.astype(np.float64)

    def model_images(self, frames, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Natural scenes ``frames`` as model input (``n x rows x cols`` in [0, 1]).

        The blank frame (-1) is mean grey (0.5). Integer templates are scaled by their dtype's
        maximum (255 for Allen's 8-bit templates).
        """
        from meireport.stimuli import prepare_image

        shape = tuple(shape) if shape is not None else self.geometry.shape
        out = np.empty((len(frames), *shape))
        for i, k in enumerate(frames):
            if int(k) == -1:
                out[i] = 0.5
                continue
            raw = self._read_template(int(k))
            vmax = float(np.iinfo(raw.dtype).max) if raw.dtype.kind in "ui" else None
            out[i] = prepare_image(raw, shape, vmax)
        return out


def open_session(
    path, session_id: int | None = None, unit_filter: UnitFilter | None = None
) -> Session:
    """Open a session from an AllenSDK cache folder or a bare Allen-format ``.nwb`` file.

    Parameters
    ----------
    path : str or Path
        Cache folder (``<cache>/session_<id>/session_<id>.nwb``) or ``.nwb`` file.
    session_id : int, optional
        Which session of the cache (needed when it holds several).
    unit_filter : UnitFilter, optional
        Unit quality criteria; AllenSDK's defaults when omitted.

    Returns
    -------
    Session

    Examples
    --------
    >>> from meireport.sources import simulate_session, open_session
    >>> import tempfile
    >>> out = simulate_session(tempfile.mkdtemp(), n_images=8, n_repeats=2, seed=1)
    >>> with open_session(out.cache_dir) as s:
    ...     "natural_scenes" in s.stimulus_names
    True
    """
    nwb, templates = resolve_session(path, session_id)
    return Session(nwb, templates, unit_filter, session_id)


def open_remote(
    url: str,
    templates=None,
    session_id: int | None = None,
    unit_filter: UnitFilter | None = None,
    timeout_s: float = 30.0,
    cache_dir=None,
    field: str = "source.url",
) -> Session:
    """Open an Allen-format NWB file over HTTP(S); only the bytes the reader touches are fetched.

    Parameters
    ----------
    url : str
        ``http(s)://`` address of the ``.nwb`` file (the server must honour ``Range`` requests,
        as DANDI's S3 bucket does).
    templates : path, optional
        Folder of ``natural_scene_<k>.tiff`` (the session files do not hold the 118 images).
    session_id : int, optional
        Default: the file's identifier, else its name (``session_<id>`` or ``..._ses-<id>``).
    unit_filter : UnitFilter, optional
        Unit quality criteria; AllenSDK's defaults when omitted.
    timeout_s : float
        Seconds to wait for the server before one error line.
    cache_dir : path, optional
        Folder of the on-disk byte-range cache (None: memory only; see
        :func:`meireport.sources.remote.default_cache_dir`).
    field : str
        Params field named in network errors.

    Returns
    -------
    Session
        The same lazy, read-only session :func:`open_session` gives for a local file.

    Examples
    --------
    >>> open_remote("ftp://example.org/session.nwb")
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: source.url: expected an http:// or https:// address, got 'ftp://example.org/session.nwb'
    """
    from meireport.sources.remote import RemoteFile

    folder = None
    if templates is not None:
        folder = Path(templates).expanduser().resolve()
        check_path(folder, "folder", "source.templates")
    f = RemoteFile(url, timeout_s=timeout_s, cache_dir=cache_dir, field=field)
    try:
        return Session(f, folder, unit_filter, session_id)
    except BaseException:
        f.close()
        raise
