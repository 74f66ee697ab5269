"""Geometric rules for predicates, applied to object tracks (torch-free): the layout stage's relation check.

A rule maps the tracks of a subject and an object, (F, 4) boxes [x0, y0, x1, y1] in [0, 1] of the frame, to a
signed slack that is > 0 exactly when the relation holds. The shapes world's six predicates have exact rules
(specs/shapes-world.md), judged here on box centres with the frame width as the unit, through
`sg2v.shapes.world.relation_score`, the same function the generator and the oracle use; COCO-Stuff's
geometric predicates have sg2im's rules on boxes. The oracle judges pixel centroids, which differ from box
centres for triangles (their centroid sits lower), so the check asks for a margin beyond the rule.

A bundle's manifest names the rules its vocabulary uses (`relation_rules`: predicate -> rule); predicates
without a rule are not checked. `contradictions` finds graphs no layout can satisfy (a cycle of "left of").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

SPATIAL = ("left of", "right of", "above", "below")
MOTION = ("approaching", "moving away from")
CONTAINMENT = ("inside", "surrounding")
# Rule ids are "<family>/<predicate>": the shapes world's rules (spec thresholds, on box centres, in frame
# widths) and sg2im's COCO-Stuff rules (on the clip's mean box: containment, else the angle sector of the
# centre offset, in radians).
SHAPES_RULES = tuple(f"shapes/{p}" for p in SPATIAL + MOTION)
COCO_RULES = tuple(f"coco/{p}" for p in SPATIAL + CONTAINMENT)
RULES = SHAPES_RULES + COCO_RULES
FAMILIES = ("shapes", "coco")
MARGINS = {"shapes": 0.03, "coco": 0.05}  # shapes: about 2 px at 64 x 64, beyond a triangle's centroid offset
@dataclass(frozen=True)
class RelationCheck:
    """One relationship judged on a layout: holds when its slack exceeds the margin."""

    subject: int
    predicate: str
    object: int
    rule: str | None  # None: the predicate has no geometric rule (not checked)
    slack: float | None
    holds: bool | None  # None when not checked

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "predicate": self.predicate, "object": self.object,
                "rule": self.rule, "slack": self.slack, "holds": self.holds}


def rules_for(predicates: Iterable[str], family: str = "shapes") -> dict[str, str]:
    """A vocabulary's rule table: each predicate that `family` has a rule for maps to that rule's id
    ("none": no predicate is checked)."""
    if family == "none":
        return {}
    if family not in FAMILIES:
        raise ValueError(f"unknown relation-rule family {family!r}; choose one of {[*FAMILIES, 'none']}")
    return {p: f"{family}/{p}" for p in predicates if f"{family}/{p}" in RULES}


def margin_of(rule: str) -> float:
    """The check's margin for `rule` (in the rule's slack unit)."""
    return MARGINS[rule.split("/", 1)[0]]


def centres(tracks: NDArray[Any]) -> NDArray[Any]:
    """Box centres (..., F, 2) (x, y) of tracks (..., F, 4)."""
    t = np.asarray(tracks, dtype=np.float64)
    return np.stack([(t[..., 0] + t[..., 2]) / 2.0, (t[..., 1] + t[..., 3]) / 2.0], axis=-1)


def rule_slack(rule: str, subject: NDArray[Any], obj: NDArray[Any]) -> NDArray[Any]:
    """Slack of `rule` between tracks (..., F, 4) of subject and object (> 0: holds), in the rule's unit."""
    from sg2v.shapes.world import relation_score

    family, _, pred = rule.partition("/")
    if rule in SHAPES_RULES:
        return relation_score(pred, centres(subject), centres(obj), 1.0)
    if rule in COCO_RULES:
        s = np.asarray(subject, dtype=np.float64).mean(-2)  # (..., 4): the clip's mean box
        o = np.asarray(obj, dtype=np.float64).mean(-2)
        inside: NDArray[Any] = np.minimum.reduce([s[..., 0] - o[..., 0], s[..., 1] - o[..., 1],
                                    o[..., 2] - s[..., 2], o[..., 3] - s[..., 3]])  # > 0: s strictly in o
        surround: NDArray[Any] = np.minimum.reduce([o[..., 0] - s[..., 0], o[..., 1] - s[..., 1],
                                      s[..., 2] - o[..., 2], s[..., 3] - o[..., 3]])
        if pred == "inside":
            return inside
        if pred == "surrounding":
            return surround
        d = centres(s[..., None, :])[..., 0, :] - centres(o[..., None, :])[..., 0, :]  # (..., 2)
        theta = np.arctan2(d[..., 1], d[..., 0])  # y down: theta in (-pi/2, 0) is up and to the right
        q = np.pi / 4
        sector = {"left of": np.abs(theta) - 3 * q,  # |theta| >= 3pi/4
                  "above": np.minimum(theta + 3 * q, -q - theta),  # -3pi/4 <= theta < -pi/4
                  "right of": q - np.abs(theta),  # -pi/4 <= theta < pi/4
                  "below": np.minimum(theta - q, 3 * q - theta)}[pred]  # pi/4 <= theta < 3pi/4
        # sg2im names containment first; a contained pair is not also left of / above ...
        return np.where((inside > 0) | (surround > 0), -np.inf, sector)
    raise ValueError(f"unknown relation rule {rule!r}; known rules: {', '.join(RULES)}")


def check_layout(tracks: NDArray[Any], relationships: Sequence[Sequence[Any]], rules: Mapping[str, str]
                 ) -> list[RelationCheck]:
    """Judge each (s, predicate, o) on tracks (n, F, 4); predicates without a rule are reported unchecked."""
    out = []
    for s, p, o in relationships:
        rule = rules.get(p)
        if rule is None:
            out.append(RelationCheck(int(s), p, int(o), None, None, None))
            continue
        slack = float(rule_slack(rule, tracks[s], tracks[o]))
        holds = bool(np.isfinite(slack) and slack > margin_of(rule))
        out.append(RelationCheck(int(s), p, int(o), rule, slack, holds))
    return out


def all_hold(checks: Sequence[RelationCheck]) -> bool:
    """True when every checked relation holds (unchecked ones do not count)."""
    return all(c.holds is not False for c in checks)


def batch_all_hold(tracks: NDArray[Any], relationships: Sequence[Sequence[Any]], rules: Mapping[str, str]
                   ) -> NDArray[Any]:
    """(K,) True for each candidate layout (K, n, F, 4) whose checked relations all hold (vectorised)."""
    ok = np.ones(tracks.shape[0], dtype=bool)
    for s, p, o in relationships:
        rule = rules.get(p)
        if rule is not None:
            slack = rule_slack(rule, tracks[:, s], tracks[:, o])  # (K,)
            ok &= np.isfinite(slack) & (slack > margin_of(rule))
    return ok


_ORDERS = {"left of": ("x", False), "right of": ("x", True), "above": ("y", False), "below": ("y", True),
           "inside": ("in", False), "surrounding": ("in", True)}  # predicate -> (strict order, reversed)


def contradictions(relationships: Sequence[Sequence[Any]], rules: Mapping[str, str]) -> list[str]:
    """Reasons no layout can satisfy the relationships: a cycle in a strict order ("a left of b", "b left
    of a"; above/below; inside/surrounding), or an object related to itself through the cycle."""
    edges: dict[str, set[tuple[int, int]]] = {"x": set(), "y": set(), "in": set()}
    names: dict[tuple[str, int, int], str] = {}
    for s, p, o in relationships:
        rule = rules.get(p)
        if rule is None or rule.partition("/")[2] not in _ORDERS:
            continue
        axis, flip = _ORDERS[rule.partition("/")[2]]
        a, b = (int(o), int(s)) if flip else (int(s), int(o))  # a precedes b on the axis
        edges[axis].add((a, b))
        names[(axis, a, b)] = f"[{s}, {p!r}, {o}]"
    found = []
    for axis, es in edges.items():
        cycle = _find_cycle(es)
        if cycle:
            pairs = list(zip(cycle, cycle[1:] + cycle[:1]))
            found.append(" and ".join(names[(axis, a, b)] for a, b in pairs) + " cannot all hold")
    return found


def _find_cycle(edges: set[tuple[int, int]]) -> list[int] | None:
    """One directed cycle (its nodes in order) of a small graph, or None (depth-first search)."""
    succ: dict[int, list[int]] = {}
    for a, b in sorted(edges):
        succ.setdefault(a, []).append(b)
    state: dict[int, int] = {}  # 1 on the stack, 2 done
    stack: list[int] = []

    def visit(u: int) -> list[int] | None:
        state[u] = 1
        stack.append(u)
        for v in succ.get(u, []):
            if state.get(v) == 1:
                return stack[stack.index(v):]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(succ):
        if u not in state:
            found = visit(u)
            if found:
                return list(found)
    return None
