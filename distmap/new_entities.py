"""Entities that were never in the dataset, ranked by a trained multimodal model from their features.

A new entity arrives with a name, a text and/or a visual row, and no edges. Its text is embedded
with the encoder the dataset's text features were embedded with (``text_encoder_for``: the
manifest's features entry records it), its visual row is taken as given, and the model's
``unseen_rows`` fuses them with the structural view absent, as the model ranks an entity it has no
structural row for. That fused row is what a query of the entity is built from (``Predictor``) and
what ``distmap export`` appends. Nothing is retrained, and new entities are query entities only: they
never join the candidates.

Sources: one entity from flags (``--new-entity NAME --text "..."``), or a TSV with a header naming
``name`` and ``text`` (``--new-entities FILE.tsv``; other columns are ignored), each optionally with
``--new-visual FILE.npy``, one row per entity in order. A model reads the modalities it was trained
with: text goes to every modality the dataset embedded with ``distmap features text``, a visual row to
``visual``; an entity with none of the model's modalities cannot be ranked, one with some of them is
fused from those (the others absent, as for a dataset entity without them).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from distmap.data.features import Encoder, encode_new_text, read_npy_rows, text_encoder_for
from distmap.data.manifest import read_manifest
from distmap.data.tsv import TsvReader, read_header
from distmap.errors import DataError, DistmapError
from distmap.models.model import KGEModel

VISUAL = "visual"  # the modality a --new-visual row feeds
NEW_COLUMNS = ("name", "text")  # the columns a --new-entities file must have
RESERVED = "?"  # marks the entity asked for in a query file: no entity may be named so

Known = Collection[str] | pa.ChunkedArray
"""The dataset's entity names: a set, or its Arrow name column (export: no Python string per entity)."""


@dataclass(frozen=True)
class NewEntities:
    """k new entities: names, texts (None: none given) and visual rows ((k, D) or None), in order."""

    names: tuple[str, ...]
    texts: tuple[str | None, ...]
    visual: np.ndarray | None
    argument: str  # the flag they came from: --new-entity or --new-entities
    source: Path | None = None  # the TSV they were read from
    lines: tuple[int, ...] = ()  # the TSV line of each
    visual_file: Path | None = None

    def where(self, i: int) -> str:
        """Entity i as a message names it: ``'x'`` or ``'x' (FILE:LINE)``."""
        return f"'{self.names[i]}'" + (f" ({self.source}:{self.lines[i]})" if self.source is not None else "")


def new_entity(name: str, text: str | None, visual_file: Path | None, known: Known) -> NewEntities:
    """One new entity from ``--new-entity NAME [--text TEXT] [--new-visual FILE.npy]``."""
    problem = _name_problem(name) or (_known_problem(name) if _in_dataset([name], known)[0] else None)
    if problem:
        raise DistmapError(f"--new-entity: {problem}")
    if text is None and visual_file is None:
        raise DistmapError(
            f"--new-entity: give the text of '{name}' with --text (or its visual row with --new-visual FILE.npy)"
        )
    if text is not None and not text.strip():
        raise DistmapError(f"--text: the text of new entity '{name}' is empty")
    visual = None if visual_file is None else load_visual(visual_file, (name,))
    return NewEntities((name,), (text,), visual, "--new-entity", visual_file=visual_file)


def read_new_entities(path: Path, visual_file: Path | None, known: Known) -> NewEntities:
    """New entities from a TSV with a header (``name``, ``text``; other columns ignored); each problem
    is ``FILE:LINE: problem``."""
    header = read_header(path)
    missing = [c for c in NEW_COLUMNS if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {missing}: the header must name {list(NEW_COLUMNS)}, has {header}", 1)
    at_name, at_text = header.index("name"), header.index("text")
    names: list[str] = []
    texts: list[str | None] = []
    lines: list[int] = []
    first: dict[str, int] = {}
    for number, fields in TsvReader(path, header, skip_header=True, optional=[c for c in header if c != "name"]):
        name, text = fields[at_name], fields[at_text] or None
        if name in first:
            raise DataError(path, f"duplicate name '{name}' (first on line {first[name]})", number)
        problem = _name_problem(name)
        if problem:
            raise DataError(path, problem, number)
        if text is None and visual_file is None:
            raise DataError(path, f"'{name}' has an empty text and no --new-visual row: nothing to rank from", number)
        first[name] = number
        names.append(name)
        texts.append(text)
        lines.append(number)
    if not names:
        raise DataError(path, "no new entities: the file has only its header")
    for name, number, there in zip(names, lines, _in_dataset(names, known), strict=True):
        if there:
            raise DataError(path, _known_problem(name), number)
    visual = None if visual_file is None else load_visual(visual_file, names)
    return NewEntities(tuple(names), tuple(texts), visual, "--new-entities", path, tuple(lines), visual_file)


def load_visual(path: Path, names: Sequence[str]) -> np.ndarray:
    """The visual rows of the new entities ``names`` from a .npy file, checked as an imported feature
    matrix is (``features.read_npy_rows``); errors name the argument."""
    try:
        return read_npy_rows(path, names)
    except DataError as err:
        raise DistmapError(f"--new-visual {err}") from None


def fused_rows(
    model: KGEModel,
    new: NewEntities,
    dataset_root: Path,
    modalities: list[str],
    *,
    encoder: Encoder | None = None,
    log: Callable[[str], None] = print,
) -> Tensor:
    """(k, d') rows the model scores for the new entities: ``model.unseen_rows`` of their features.

    ``modalities`` are the model's (``data.modalities`` of its run). ``encoder`` replaces the
    dataset's text encoder (tests, or an encoder not registered in ``TEXT_ENCODERS``).
    """
    if not modalities:  # a structural model: its own error says it has no projection
        try:
            model.unseen_rows({})
        except DistmapError as err:
            raise DistmapError(f"{new.argument}: {err}") from None
        raise DistmapError(f"{new.argument}: the model reads no features: it ranks only the entities it was trained on")
    available = read_manifest(dataset_root)["features"]
    texts = [m for m in modalities if m == "text" or "encoder" in available.get(m, {})]
    has = {m: [t is not None for t in new.texts] for m in texts}
    _note_unused(new, modalities, texts, log)
    if new.visual is not None and VISUAL in modalities:
        dim = int(available[VISUAL]["dim"])
        if new.visual.shape[1] != dim:
            raise DistmapError(
                f"--new-visual {new.visual_file}: rows are {new.visual.shape[1]} wide; the dataset's visual "
                f"features are {dim} wide"
            )
        has[VISUAL] = [True] * len(new.names)
    for i in range(len(new.names)):
        if not any(flags[i] for flags in has.values()):
            raise DistmapError(f"{new.argument}: {new.where(i)} {_lacking(new, i, modalities, texts)}")
    model.eval()  # as the predictor scores it
    device = model.relations.device
    features: dict[str, Tensor] = {}  # modality -> (k, D_m), rows of entities without it left at zero
    loaded: dict[str, Encoder] = {}  # encoder name -> encoder, loaded once for all the text modalities
    for m in texts:
        given = [i for i, flag in enumerate(has[m]) if flag]
        if not given:
            continue
        name = available[m].get("encoder", "")
        if encoder is None and name not in loaded:
            argument = "--text" if new.source is None else new.argument
            loaded[name] = text_encoder_for(dataset_root, m, argument=argument)
        encode = encoder or loaded[name]
        vectors = encode_new_text(encode, [new.texts[i] for i in given], int(available[m]["dim"]), m, new.argument)
        matrix = np.zeros((len(new.names), vectors.shape[1]), dtype=np.float32)
        matrix[given] = vectors
        features[m] = torch.from_numpy(matrix).to(device)
    if VISUAL in has:
        features[VISUAL] = torch.from_numpy(new.visual).to(device)
    groups: dict[tuple[str, ...], list[int]] = {}  # the entities having the same modalities are fused at once
    for i in range(len(new.names)):
        groups.setdefault(tuple(m for m in has if has[m][i]), []).append(i)
    out: Tensor | None = None
    with torch.no_grad():
        for present, members in groups.items():
            index = torch.tensor(members, device=device)
            try:
                rows = model.unseen_rows({m: features[m][index] for m in present})
            except DistmapError as err:
                raise DistmapError(f"{new.argument}: {err}") from None
            if out is None:
                out = rows.new_empty(len(new.names), rows.shape[1])
            out[index] = rows
    assert out is not None
    return out


def _name_problem(name: str) -> str | None:
    if not name or name != name.strip() or any(c in name for c in "\t\n\r"):
        return f"the name {name!r} is empty, has surrounding spaces or holds a tab or line break"
    if name == RESERVED:
        return f"'{RESERVED}' marks the entity asked for in a query file: give the new entity another name"
    return None


def _known_problem(name: str) -> str:
    return (
        f"'{name}' is already an entity of the dataset: ask about it with --head/--tail {name}, or give the new "
        "entity a name of its own"
    )


def _in_dataset(names: list[str], known: Known) -> list[bool]:
    if isinstance(known, pa.ChunkedArray):
        return pc.is_in(pa.array(names, pa.string()), value_set=known.combine_chunks()).to_pylist()
    return [name in known for name in names]


def _lacking(new: NewEntities, i: int, modalities: list[str], texts: list[str]) -> str:
    """Why entity i cannot be ranked: it has none of the modalities the model reads."""
    given = [kind for kind, there in (("text", new.texts[i]), ("a visual row", new.visual is not None)) if there]
    fixes = []
    if VISUAL in modalities:
        fixes.append("its visual row with --new-visual FILE.npy")
    if texts:
        fixes.append("its text" + (" with --text" if new.source is None else " in the text column"))
    fix = f"; give {' or '.join(fixes)}" if fixes else ""
    return f"has {' and '.join(given)} only; the model reads {', '.join(modalities)}, none of which it has{fix}"


def _note_unused(new: NewEntities, modalities: list[str], texts: list[str], log: Callable[[str], None]) -> None:
    """Say which given features the model does not read (they are left out, not an error)."""
    if new.visual is not None and VISUAL not in modalities:
        log(f"note: the model reads no visual features ({', '.join(modalities)}): --new-visual ignored")
    if not texts and any(t is not None for t in new.texts):
        given = "--text" if new.source is None else f"the text column of {new.source}"
        log(f"note: the model reads no text features ({', '.join(modalities)}): {given} ignored")
