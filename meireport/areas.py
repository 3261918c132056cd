"""Which brain areas a report analyses: the ``extract.area`` field resolved on one session.

``extract.area`` is one structure acronym (``VISam``), a list of them (``[VISam, VISp]``), the
word ``visual`` (every visual cortical area the session has units in) or ``null`` (every area).
:func:`check_area_field` checks its form (the params file is checked with it before anything
runs); :func:`resolve_areas` turns it into the session's acronyms, and :func:`area_unit_ids`
into the ids of their units.

The module sits below :mod:`meireport.sources` in the layers (it imports nothing of the
package but its errors; a session is anything with ``areas``, ``session_id`` and
``unit_ids(area)``), so that the source's preflight can check the field too;
:mod:`meireport.extract` re-exports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from meireport.errors import MeireportError

__all__ = [
    "VISUAL",
    "NOT_VISUAL",
    "AreaField",
    "area_unit_ids",
    "check_area_field",
    "is_visual_area",
    "resolve_areas",
]

#: The ``extract.area`` word for every visual cortical area of the session.
VISUAL = "visual"
#: Acronyms that start with ``VIS`` but are not visual cortex (the Allen CCF's visceral area).
NOT_VISUAL = ("VISC",)

AreaField = str | Sequence[str] | None
"""What ``extract.area`` holds: an acronym, a list of acronyms, ``"visual"`` or ``None``."""

_FIELD = "extract.area"
_EXPECTED = "expected a structure acronym (e.g. VISam), a list of them, or 'visual'"


def is_visual_area(acronym: str) -> bool:
    """Whether a structure acronym is a visual cortical area (``VIS...``, not ``VISC``).

    The Allen Brain Observatory's visual areas are VISp, VISl, VISal, VISrl, VISam and VISpm;
    any other ``VIS`` acronym (``VISli``, ``VISmma``, an unassigned ``VIS``) counts as visual,
    except ``VISC`` (the visceral area of the Allen CCF).

    Examples
    --------
    >>> [is_visual_area(a) for a in ("VISp", "VISrl", "VIS", "VISC", "CA1", "LGd")]
    [True, True, True, False, False, False]
    """
    return acronym.startswith("VIS") and acronym.split("-")[0] not in NOT_VISUAL


def check_area_field(value: object) -> str | tuple[str, ...] | None:
    """Check the form of ``extract.area``; its value as a string, a tuple or ``None``.

    Parameters
    ----------
    value : object
        A structure acronym, ``"visual"``, a non-empty list of distinct acronyms, or ``None``.

    Returns
    -------
    str, tuple of str or None
        The value; a list becomes a tuple.

    Raises
    ------
    MeireportError
        One line naming ``extract.area`` and the value.

    Examples
    --------
    >>> check_area_field(["VISam", "VISp"])
    ('VISam', 'VISp')
    >>> check_area_field(3)
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: extract.area: expected a structure acronym (e.g. VISam), \
a list of them, or 'visual'; got 3
    """
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise MeireportError(f"{_FIELD}: {_EXPECTED}; got an empty text")
        return value
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, bytes):
        items = list(value)
        if not items or not all(isinstance(a, str) and a.strip() for a in items):
            raise MeireportError(f"{_FIELD}: {_EXPECTED}; got {items!r}")
        if VISUAL in items:
            raise MeireportError(f"{_FIELD}: '{VISUAL}' stands alone (area: {VISUAL}), not in a "
                                 f"list; got {items!r}")
        repeated = sorted({a for a in items if items.count(a) > 1})
        if repeated:
            raise MeireportError(f"{_FIELD}: expected distinct acronyms, got {items!r} "
                                 f"({', '.join(repeated)} repeated)")
        return tuple(items)
    raise MeireportError(f"{_FIELD}: {_EXPECTED}; got {value!r}")


def _available(session) -> list[str]:
    return list(session.areas)


def resolve_areas(session, area: AreaField) -> list[str]:
    """The session's areas that ``extract.area`` chooses, in the order given (else sorted).

    Parameters
    ----------
    session : meireport.sources.Session
        An open session (anything with ``areas``, its units' sorted structure acronyms, and
        ``session_id``).
    area : str, list of str, "visual" or None
        ``extract.area``: one acronym, several, every visual cortical area the session has units
        in (:func:`is_visual_area`), or every area.

    Returns
    -------
    list of str
        Acronyms, each with units in the session.

    Raises
    ------
    MeireportError
        One line naming ``extract.area``, the value and the session's areas: a bad form, an
        acronym without units in the session, or ``visual`` in a session without visual units.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> s = SimpleNamespace(areas=["CA1", "VISam", "VISp"], session_id=7)
    >>> resolve_areas(s, "VISam"), resolve_areas(s, ["VISp", "VISam"]), resolve_areas(s, "visual")
    (['VISam'], ['VISp', 'VISam'], ['VISam', 'VISp'])
    >>> resolve_areas(s, "LGd")
    Traceback (most recent call last):
    ...
    meireport.errors.MeireportError: extract.area: 'LGd' has no units in session 7; \
available: CA1, VISam, VISp
    """
    value = check_area_field(area)
    available = _available(session)
    where = f"in session {session.session_id}; available: {', '.join(available) or 'none'}"
    if value is None:
        return available
    if value == VISUAL:
        chosen = [a for a in available if is_visual_area(a)]
        if not chosen:
            raise MeireportError(f"{_FIELD}: '{VISUAL}' found no visual cortical area (VIS...) "
                                 f"{where}")
        return chosen
    items = [value] if isinstance(value, str) else list(value)
    missing = [a for a in items if a not in available]
    if missing:
        names = ", ".join(repr(a) for a in missing)
        verb = "has" if len(missing) == 1 else "have"
        raise MeireportError(f"{_FIELD}: {names} {verb} no units {where}")
    return items


def area_unit_ids(session, area: AreaField) -> np.ndarray:
    """Ids of the session's (filtered) units in the areas ``extract.area`` chooses.

    Area by area in the order of :func:`resolve_areas`, each area's units in the session's
    order; raises as :func:`resolve_areas` does.

    Examples
    --------
    >>> import tempfile
    >>> from meireport.sources import open_session, simulate_session  # for the example only
    >>> d = tempfile.mkdtemp()
    >>> _ = simulate_session(d, n_images=4, n_repeats=2, progress=False)
    >>> with open_session(d) as s:
    ...     both = area_unit_ids(s, ["VISam", "VISp"])
    ...     len(both) == len(s.unit_ids("VISam")) + len(s.unit_ids("VISp"))
    True
    """
    areas = resolve_areas(session, area)
    if area is None:
        return session.unit_ids(None)
    return np.concatenate([session.unit_ids(a) for a in areas]).astype(np.int64)
