"""The layout stage of generation (torch-free): draw object tracks, check relations, redraw, report.

For each graph the layout network (a `Stage`: `run(feeds) -> {"v": ...}`) is sampled with the shared
samplers of `sg2v.sampling` from noise that depends only on the graph's seed and the draw's round, so a graph
gets the same layout alone or in a batch, on every backend. Candidates are drawn in rounds of `per_round`; a
graph leaves the loop as soon as one candidate satisfies every relation that has a geometric rule
(`sg2v.relations`) and keeps the geometric constraints of the data (`sg2v.geometry`: no overlap, box sizes,
inside the canvas), after `tries` draws at most. The first such candidate in draw order is kept; when none
passes, the one keeping the most constraints is kept (ties: fewer frames breaking one, then more relations
holding, then the largest smallest relation slack) and the result says what fails. A graph whose relations
contradict each other (a cycle of "left of") is reported as contradictory and redrawn only until the
data's geometry holds (drawn once when the bundle declares none). Pinned tracks
(given by the user) enter the network as inputs and are put back exactly in every candidate; the constraints
are judged on the drawn objects (a drawn object must keep clear of a pinned one), and what the pinned tracks
break among themselves is reported (`given_breaks`), not redrawn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.geometry import Geometry, GeometryCheck, batch_geometry_ok, check_geometry, geometry_failures
from sg2v.relations import RelationCheck, batch_all_hold, check_layout, contradictions, margin_of
from sg2v.sampling import get_sampler
from sg2v.schedule import timesteps

LAYOUT_NOISE_STREAM = 1  # SeedSequence([seed, stream, round]): independent of the video's default_rng(seed)
LAYOUT_INPUTS = ("x", "t", "objects", "track_mask", "context", "context_mask", "triples", "known",
                 "known_mask")


@dataclass
class LayoutResult:
    """The tracks one graph is drawn with, and what the relation and geometry checks found."""

    tracks: NDArray[Any]  # (n, F, 4) float32, boxes in [0, 1]
    relations: list[RelationCheck]
    draws: int  # candidates judged in draw order up to the kept one (1: the first held; 0: all tracks given)
    satisfied: bool  # every relation with a rule holds and the drawn objects keep every constraint
    pinned: list[int] = field(default_factory=list)  # object indices whose tracks were given
    contradictions: list[str] = field(default_factory=list)
    geometry: list[GeometryCheck] = field(default_factory=list)  # on the drawn objects (all, when none given)
    given_breaks: list[GeometryCheck] = field(default_factory=list)  # broken by the given tracks alone

    @property
    def failed(self) -> list[RelationCheck]:
        return [c for c in self.relations if c.holds is False]

    def to_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "satisfied": self.satisfied, "pinned": self.pinned,
                "contradictions": self.contradictions, "relations": [c.to_dict() for c in self.relations],
                "geometry": [c.to_dict() for c in self.geometry],
                "given_breaks": [c.to_dict() for c in self.given_breaks]}


def layout_noise(seed: int, round_: int, count: int, shape: Sequence[int]) -> NDArray[Any]:
    """x_T of `count` layout candidates of round `round_` for a graph with seed `seed`: (count, *shape)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), LAYOUT_NOISE_STREAM, int(round_)]))
    return rng.standard_normal((count, *shape), dtype=np.float32)


def round_sizes(tries: int, per_round: int) -> list[int]:
    """Candidates per graph in each draw round for `tries` at most: `per_round` in the first two rounds,
    then twice as many each round, at most 4 x `per_round` (few graphs get that far; fewer, larger rounds
    save the network's per-call cost on them)."""
    tries = int(tries)
    base = max(1, min(int(per_round), tries))
    out: list[int] = []
    while sum(out) < tries:
        out.append(min(base * 2 ** min(max(len(out) - 1, 0), 2), tries - sum(out)))
    return out


def max_rounds(tries: int, per_round: int) -> int:
    """The most draw rounds `LayoutSampler.draw` takes for `tries` candidates (`round_sizes`)."""
    return len(round_sizes(tries, per_round))


def tracks_from_unit(x: NDArray[Any], width: int, height: int) -> NDArray[Any]:
    """Network output in [-1, 1] (..., F, 4) -> boxes in [0, 1] with x0 < x1, y0 < y1, at least 1 px wide."""
    b = np.clip((np.asarray(x, dtype=np.float64) + 1.0) / 2.0, 0.0, 1.0)
    out = np.empty_like(b)
    for lo, hi, side in ((0, 2, 1.0 / width), (1, 3, 1.0 / height)):
        a, c = np.minimum(b[..., lo], b[..., hi]), np.maximum(b[..., lo], b[..., hi])
        short = c - a < side
        mid = np.clip((a + c) / 2.0, side / 2.0, 1.0 - side / 2.0)
        out[..., lo] = np.where(short, mid - side / 2.0, a)
        out[..., hi] = np.where(short, mid + side / 2.0, c)
    return out.astype(np.float32)


def _score(checks: Sequence[RelationCheck],
           geometry: Sequence[GeometryCheck] = ()) -> tuple[int, int, int, float]:
    """Rank of a candidate that fails: the data's geometric constraints holding first, then fewer frames
    breaking one, then relations holding, then the smallest relation slack beyond its margin. Geometry comes
    first because a layout the data never has (overlapping boxes) loses objects in the video, where a missed
    relation loses only that relation."""
    held = sum(c.holds is True for c in checks)
    gaps = [c.slack - margin_of(c.rule) for c in checks if c.rule is not None and c.slack is not None]
    worst = min(gaps) if gaps else 0.0
    return (sum(c.holds for c in geometry), -sum(c.frames for c in geometry), held,
            worst if np.isfinite(worst) else -np.inf)


def _free(count: int, pinned: Mapping[int, Any]) -> NDArray[Any] | None:
    """(count,) True for the objects drawn; None when none is pinned (every object is judged)."""
    if not pinned:
        return None
    free = np.ones(count, dtype=bool)
    free[[int(k) for k in pinned]] = False
    return free


def given_breaks(tracks: NDArray[Any], pinned: Mapping[int, Any], geometry: Geometry | None
                 ) -> list[GeometryCheck]:
    """The constraints the given tracks break among themselves (object indices of the whole graph)."""
    if geometry is None or not pinned:
        return []
    idx = sorted(int(k) for k in pinned)
    out = []
    for c in check_geometry(np.asarray(tracks)[idx], geometry):
        if not c.holds:
            objects = tuple(idx[k] for k in c.objects)
            out.append(GeometryCheck(c.constraint, False, c.frames, objects, c.worst))
    return out


class LayoutSampler:
    """Draws tracks for a batch of graphs with a layout stage (module note)."""

    def __init__(self, run: Callable[[dict[str, Any]], Any], alphas_cumprod: NDArray[Any], frames: int,
                 height: int, width: int, rules: Mapping[str, str], steps: int = 8, tries: int = 16,
                 per_round: int = 8, sampler: str = "dpmpp2m", xp: Any = np,
                 max_batch: int | None = None, geometry: Geometry | None = None):
        if not isinstance(tries, (int, np.integer)) or isinstance(tries, bool) or tries < 1:
            raise ValueError(f"layout tries must be an integer >= 1, got {tries!r}")
        self.run = run
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        self.frames, self.height, self.width = int(frames), int(height), int(width)
        self.rules = dict(rules)
        self.steps, self.tries = int(steps), int(tries)
        self.per_round = max(1, min(int(per_round), self.tries))
        self.sample = get_sampler(sampler)
        self.xp = xp
        self.max_batch = max_batch
        self.geometry = geometry

    def draw(self, cond: Mapping[str, NDArray[Any]], relationships: Sequence[Sequence[Sequence[Any]]],
             counts: Sequence[int], pinned: Sequence[Mapping[int, NDArray[Any]]], seeds: Sequence[int],
             on_round: Callable[[int], None] | None = None) -> list[LayoutResult]:
        """Layouts for B graphs: `cond` holds the stage's per-graph inputs (objects, context, context_mask,
        triples: (B, ...) host arrays), `counts` each graph's objects, `pinned` its given (F, 4) tracks;
        `on_round(k)` is called after round k (1-based) of at most `max_rounds(tries, per_round)`."""
        b = len(counts)
        o = cond["objects"].shape[1]
        shape = (o, self.frames, 4)
        results: list[LayoutResult | None] = [None] * b
        best: list[tuple[Any, NDArray[Any], list[RelationCheck], list[GeometryCheck]] | None] = [None] * b
        drawn = [0] * b
        contra = [contradictions(relationships[i], self.rules) for i in range(b)]
        need = []
        for i in range(b):
            if len(pinned[i]) == counts[i]:  # every track given: nothing to draw, only to check
                tracks = np.stack([np.asarray(pinned[i][k], np.float32) for k in range(counts[i])])
                checks = check_layout(tracks, relationships[i], self.rules)
                results[i] = LayoutResult(tracks, checks, 0, all(c.holds is not False for c in checks),
                                          sorted(pinned[i]), contra[i], [],
                                          given_breaks(tracks, pinned[i], self.geometry))
            else:
                need.append(i)
        round_ = 0
        sizes = round_sizes(self.tries, self.per_round)
        while need:
            # one batched sampling of this round's candidates for every unfinished graph
            ks = [1 if self._drawn_once(contra[i], relationships[i]) else
                  min(sizes[round_], self.tries - drawn[i]) for i in need]
            cands = self._sample(cond, need, ks, pinned, seeds, round_, shape, counts)
            pos, still = 0, []
            for i, k in zip(need, ks):
                c = cands[pos:pos + k, :counts[i]]  # (k, n, F, 4)
                pos += k
                results[i], drawn[i], best[i] = self._judge(c, relationships[i], pinned[i], contra[i],
                                                            drawn[i], best[i])
                if results[i] is None:
                    still.append(i)
            need = still
            round_ += 1
            if on_round is not None:
                on_round(round_)
        return [r for r in results if r is not None]

    def _judge(self, c: NDArray[Any], rels: Sequence[Sequence[Any]], pinned: Mapping[int, NDArray[Any]],
               contra: list[str], drawn: int, best: Any) -> tuple[LayoutResult | None, int, Any]:
        """One graph's k candidates c (k, n, F, 4) of a round, in draw order: (its result, once a candidate
        passes or its draws are spent, else None; its draws so far; its best failing draw so far)."""
        free = _free(c.shape[1], pinned)
        ok = batch_geometry_ok(c, self.geometry, free)  # (k,)
        if not contra:  # relations that cannot all hold are not asked of a draw
            ok &= batch_all_hold(c, rels, self.rules)
        if ok.any():
            j = int(np.argmax(ok))
            return (LayoutResult(c[j], check_layout(c[j], rels, self.rules), drawn + j + 1, not contra,
                                 sorted(pinned), contra, check_geometry(c[j], self.geometry, free),
                                 given_breaks(c[j], pinned, self.geometry)), drawn + j + 1, best)
        drawn += c.shape[0]
        for cand in c:
            checks = check_layout(cand, rels, self.rules)
            geo = check_geometry(cand, self.geometry, free)
            score = _score(checks, geo)
            if best is None or score > best[0]:
                best = (score, cand, checks, geo)
        if drawn >= self.tries or self._drawn_once(contra, rels):
            _, tracks, checks, geo = best
            return (LayoutResult(tracks, checks, drawn, False, sorted(pinned), contra, geo,
                                 given_breaks(tracks, pinned, self.geometry)), drawn, best)
        return None, drawn, best

    def _drawn_once(self, contradictory: Sequence[str], relationships: Sequence[Sequence[Any]]) -> bool:
        """Whether a graph gets one draw: nothing in it is judged, or its relations cannot all hold and there
        is no geometry to keep (a contradictory graph is still redrawn until the data's geometry holds)."""
        return not self._needs_check(relationships) or (bool(contradictory) and self.geometry is None)

    def _needs_check(self, relationships: Sequence[Sequence[Any]]) -> bool:
        """Whether a graph's draws are judged (and redrawn): a relation with a rule, or any geometry."""
        return self.geometry is not None or any(p in self.rules for _, p, _ in relationships)

    def _sample(self, cond: Mapping[str, NDArray[Any]], rows: list[int], ks: list[int],
                pinned: Sequence[Mapping[int, NDArray[Any]]], seeds: Sequence[int], round_: int,
                shape: tuple[int, int, int], counts: Sequence[int]) -> NDArray[Any]:
        """Candidates (sum(ks), O, F, 4) in [0, 1] for graphs `rows`, ks[j] each, pinned tracks restored."""
        xp = self.xp
        rep = np.repeat(np.asarray(rows), ks)  # graph of each candidate row
        n = len(rep)
        o = shape[0]
        track_mask = np.zeros((n, o), np.float32)
        known = np.zeros((n, *shape), np.float32)
        known_mask = np.zeros((n, o), np.float32)
        for r, i in enumerate(rep):
            track_mask[r, :counts[i]] = 1.0
            for k, tr in pinned[i].items():
                known[r, k] = 2.0 * np.asarray(tr, np.float32) - 1.0
                known_mask[r, k] = 1.0
        x = np.concatenate([layout_noise(seeds[i], round_, k, shape) for i, k in zip(rows, ks)])
        feeds = {name: cond[name][rep] for name in ("objects", "context", "context_mask", "triples")}
        feeds.update(track_mask=track_mask, known=known, known_mask=known_mask)
        out = []
        limit = self.max_batch or n
        for lo in range(0, n, limit):
            part = {k: xp.asarray(v[lo:lo + limit]) for k, v in feeds.items()}
            t_buf = xp.empty((min(limit, n - lo),), dtype=np.float32)

            def denoise(xt: Any, t: float, part: dict[str, Any] = part, t_buf: Any = t_buf) -> Any:
                t_buf[...] = t
                return self.run({**part, "x": xt, "t": t_buf})["v"]

            ts = timesteps(len(self.alphas_cumprod), self.steps, "trailing")
            xt = self.sample(denoise, xp.asarray(x[lo:lo + limit]), ts, self.alphas_cumprod)
            out.append(np.asarray(xt if xp is np else xp.asnumpy(xt)))
        tracks = tracks_from_unit(np.concatenate(out), self.width, self.height)  # (n, O, F, 4)
        for r, i in enumerate(rep):
            for k, tr in pinned[i].items():
                tracks[r, k] = np.asarray(tr, np.float32)  # given tracks stay exactly as given
        return tracks


def relation_summary(result: LayoutResult) -> str:
    """One line on what a layout could not meet (empty when everything holds): contradictory or failing
    relations, constraints of the data the drawn objects break, and those the given tracks break (the model
    never saw such scenes: a warning, not a refusal)."""
    parts = []
    if result.contradictions:
        parts.append("contradictory relationships: " + "; ".join(result.contradictions))
    failed = result.failed
    if failed and not result.contradictions:
        shown = ", ".join(f"[{c.subject}, {c.predicate!r}, {c.object}]" for c in failed)
        if result.draws == 0:  # every track was given: nothing was drawn
            parts.append(f"{len(failed)} relationship(s) not met by the given tracks: {shown}; change those "
                         "tracks")
        else:
            parts.append(f"{len(failed)} relationship(s) not met by the layout after {result.draws} draws: "
                         f"{shown}; raise --layout-tries or give their tracks with --layout")
    drawn = geometry_failures(result.geometry)
    if drawn:
        advice = "" if result.contradictions else "; raise --layout-tries"
        parts.append(f"the layout after {result.draws} draws breaks the data's geometry: {', '.join(drawn)}"
                     + advice)
    given = geometry_failures(result.given_breaks)
    if given:
        parts.append(f"the given tracks break the data's geometry ({', '.join(given)}): the model never saw "
                     "such scenes, expect a blend there")
    return "; ".join(parts)
