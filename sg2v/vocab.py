"""Scene-graph vocabularies in sg2im's JSON layout (torch-free).

A vocabulary maps object and predicate names to the integer ids the encoder embeds. The layout is sg2im's
(`object_name_to_idx`, `object_idx_to_name`, `pred_name_to_idx`, `pred_idx_to_name`), so the Visual Genome
and COCO-Stuff vocabularies written by sg2im load unchanged. As in sg2im, `__image__` is object 0 and
`__in_image__` is predicate 0; the graph parser appends them, users never write them. COCO's
`object_idx_to_name` has filler names at unused ids (its category ids have gaps): names that `*_name_to_idx`
does not map back are placeholders that count towards the vocabulary size but cannot be written in a graph.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

from sg2v.errors import VocabError
from sg2v.io import atomic_write_text

IMAGE_OBJECT = "__image__"
IN_IMAGE_PRED = "__in_image__"
VOCAB_KEYS = ("object_name_to_idx", "object_idx_to_name", "pred_name_to_idx", "pred_idx_to_name")


@dataclass(frozen=True, eq=True)
class Vocab:
    """Object and predicate names <-> ids (sg2im layout); from `from_dict`, `load_vocab` or `shapes_vocab`."""

    object_idx_to_name: tuple[str, ...]
    pred_idx_to_name: tuple[str, ...]
    object_name_to_idx: dict[str, int]
    pred_name_to_idx: dict[str, int]

    __hash__ = None  # type: ignore[assignment]  # unhashable on purpose: holds dicts

    @property
    def num_objs(self) -> int:
        """Object embedding rows (`EncoderConfig.num_objs`), `__image__` and placeholders included."""
        return len(self.object_idx_to_name)

    @property
    def num_preds(self) -> int:
        """Predicate embedding rows (`EncoderConfig.num_preds`), `__in_image__` included."""
        return len(self.pred_idx_to_name)

    @property
    def object_names(self) -> tuple[str, ...]:
        """Names a graph may use as objects, in id order (`__image__` excluded)."""
        return _user_names(self.object_name_to_idx, IMAGE_OBJECT)

    @property
    def pred_names(self) -> tuple[str, ...]:
        """Names a graph may use as predicates, in id order (`__in_image__` excluded)."""
        return _user_names(self.pred_name_to_idx, IN_IMAGE_PRED)

    @classmethod
    def from_dict(cls, d: Any, where: str = "vocab") -> Vocab:
        """Validate an sg2im vocabulary dict; other keys (sg2im's attribute tables) are ignored."""
        if not isinstance(d, dict):
            raise VocabError(f"{where}: expected a JSON object with keys {', '.join(VOCAB_KEYS)}, "
                             f"got {type(d).__name__}")
        missing = [k for k in VOCAB_KEYS if k not in d]
        if missing:
            raise VocabError(f"{where}: missing key(s) {', '.join(missing)}; an sg2im vocabulary has "
                             f"{', '.join(VOCAB_KEYS)}")
        obj_i2n, obj_n2i = _check_table(d, "object", where)
        pred_i2n, pred_n2i = _check_table(d, "pred", where)
        for kind, n2i, special in (("object", obj_n2i, IMAGE_OBJECT), ("pred", pred_n2i, IN_IMAGE_PRED)):
            if n2i.get(special) != 0:
                now = "missing" if special not in n2i else f"at index {n2i[special]}"
                raise VocabError(
                    f"{where}.{kind}_name_to_idx: {special!r} must be index 0 (sg2im convention), "
                    f"it is {now}; "
                    f"put {special!r} first in {kind}_idx_to_name and map it to 0, shifting the other ids"
                )
        return cls(obj_i2n, pred_i2n, obj_n2i, pred_n2i)

    def to_dict(self) -> dict[str, Any]:
        """Plain sg2im dict (lists, dicts, str, int): JSON- and `torch.load(weights_only=True)`-safe."""
        return {
            "object_name_to_idx": dict(self.object_name_to_idx),
            "object_idx_to_name": list(self.object_idx_to_name),
            "pred_name_to_idx": dict(self.pred_name_to_idx),
            "pred_idx_to_name": list(self.pred_idx_to_name),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"


def _user_names(n2i: dict[str, int], special: str) -> tuple[str, ...]:
    return tuple(name for name, _ in sorted(n2i.items(), key=lambda kv: kv[1]) if name != special)


def _check_table(d: dict[Any, Any], kind: str, where: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """Check one name<->index pair of tables for types and mutual consistency."""
    i2n_key, n2i_key = f"{kind}_idx_to_name", f"{kind}_name_to_idx"
    i2n, n2i = d[i2n_key], d[n2i_key]
    if not isinstance(i2n, list) or not i2n:
        raise VocabError(f"{where}.{i2n_key}: expected a non-empty list of names, got {_kind(i2n)}")
    for i, name in enumerate(i2n):
        if not isinstance(name, str):
            raise VocabError(f"{where}.{i2n_key}[{i}]: expected a name (string), got {_kind(name)}")
    if not isinstance(n2i, dict) or not n2i:
        raise VocabError(f"{where}.{n2i_key}: expected a non-empty object of name: index, got {_kind(n2i)}")
    for name, idx in n2i.items():
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise VocabError(f"{where}.{n2i_key}[{name!r}]: expected an integer index, got {_kind(idx)}")
        if not 0 <= idx < len(i2n):
            raise VocabError(f"{where}.{n2i_key}[{name!r}]: index {idx} is outside {i2n_key} "
                             f"(length {len(i2n)}); make the two tables agree")
        if i2n[idx] != name:
            raise VocabError(f"{where}.{n2i_key}[{name!r}]: index {idx} names {i2n[idx]!r} in {i2n_key}; "
                             "make the two tables agree")
    return tuple(i2n), dict(n2i)


def _kind(v: Any) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def load_vocab(path: str | os.PathLike[str]) -> Vocab:
    """Read an sg2im vocabulary JSON file (e.g. sg2im's `vocab.json` for Visual Genome)."""
    from sg2v.safety import read_input

    try:
        raw = read_input(path)
    except OSError as e:
        raise VocabError(f"{path}: cannot read vocabulary file ({e.strerror or e}); check the path") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise VocabError(f"{path}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                         "save it as UTF-8") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise VocabError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (ValueError, RecursionError) as e:
        raise VocabError(f"{path}: invalid JSON ({e})") from None
    return Vocab.from_dict(d, where=str(path))


def save_vocab(vocab: Vocab, path: str | os.PathLike[str]) -> None:
    """Write `vocab` as sg2im JSON, atomically."""
    atomic_write_text(path, vocab.to_json())


def shapes_vocab() -> Vocab:
    """The shapes world's vocabulary (shapes-world.md): 21 "<color> <shape>" objects, 6 predicates."""
    text = (resources.files("sg2v") / "data" / "shapes_vocab.json").read_text(encoding="utf-8")
    return Vocab.from_dict(json.loads(text), where="sg2v/data/shapes_vocab.json")
