"""The Shapes world: procedurally generated scenes whose ground truth is known exactly.

No pretrained weights or public datasets can be downloaded here, so every feature (text, image
and composed search, tagging, heatmaps, training) is demonstrated on this seeded world.

A scene holds 1 to 3 objects, each with a shape, a colour, a size and a position (one object per
position). A scene's canonical description is unique to it; captions paraphrase it; two renderings
of one scene differ in pixels (jittered position, size, rotation, colour and background).

Splits are disjoint by scene: a scene belongs to train, val or test by a hash of its description.
`write_dataset` writes the CIRR on-disk format (captions/cap.rc2.{split}.json,
image_splits/split.rc2.{split}.json, images under {split}/) plus `metadata.csv` for the
collection reader. Each gallery set is a reference scene, five single-edit variants of it
(the CIRR `img_set`, which doubles as "looks like the reference" distractors) and two scenes that
contain the edited object elsewhere ("matches only the text" distractors).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Container
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")


COLOURS = {
    "red": (215, 35, 35),
    "green": (30, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (235, 210, 30),
    "purple": (135, 55, 175),
    "orange": (245, 135, 25),
    "pink": (245, 135, 195),
    "cyan": (40, 200, 215),
}


SIZES = ("small", "large")


POSITIONS = ("left", "top", "centre", "bottom", "right")  # canonical reading order


CENTRES = {
    "left": (0.18, 0.5),
    "top": (0.5, 0.18),
    "centre": (0.5, 0.5),
    "bottom": (0.5, 0.82),
    "right": (0.82, 0.5),
}


HALF_SIZE = {"small": 0.075, "large": 0.125}  # fraction of the image side


IMAGE_SIZE = 64


SUPERSAMPLE = 2


MAX_OBJECTS = 3


SPLIT_SHARES = {"test": 10, "val": 10}  # percent of scenes; the rest is train


EDIT_KINDS = ("colour", "shape", "size", "add", "remove", "move")


SET_VARIANTS = 5


TEXT_DISTRACTORS = 2


BACKGROUNDS = (
    (232, 232, 232),
    (214, 210, 200),
    (200, 208, 214),
    (70, 70, 74),
    (45, 50, 58),
    (176, 176, 170),
)


@dataclass(frozen=True, order=True)
class ShapeObject:
    position: str
    shape: str
    colour: str
    size: str

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


Scene = tuple[ShapeObject, ...]


def make_scene(objects) -> Scene:
    """Objects in canonical order (by position); one object per position."""
    scene = tuple(sorted(objects, key=lambda obj: POSITIONS.index(obj.position)))
    if len({obj.position for obj in scene}) != len(scene) or not 1 <= len(scene) <= MAX_OBJECTS:
        raise ValueError("a scene has 1 to 3 objects at distinct positions")
    return scene


POSITION_PHRASES = {
    "left": ("on the left", "at the left", "on the left side", "to the left"),
    "right": ("on the right", "at the right", "on the right side", "to the right"),
    "top": ("at the top", "on top", "at the top edge", "near the top"),
    "bottom": ("at the bottom", "at the bottom edge", "near the bottom", "down below"),
    "centre": ("in the centre", "in the middle", "at the center", "in the center"),
}


MOVE_PHRASES = {
    "left": ("to the left", "to the left side", "over to the left"),
    "right": ("to the right", "to the right side", "over to the right"),
    "top": ("to the top", "up to the top", "to the top edge"),
    "bottom": ("to the bottom", "down to the bottom", "to the bottom edge"),
    "centre": ("to the centre", "to the middle", "to the center"),
}


SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}


PREFIXES = ("", "", "a picture of ", "an image with ", "a drawing of ", "a scene with ")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def canonical_object(obj: ShapeObject) -> str:
    return f"{_with_article(obj.phrase())} {POSITION_PHRASES[obj.position][0]}"


def _join(parts: list[str], comma: bool = True) -> str:
    if len(parts) == 1:
        return parts[0]
    head = ", ".join(parts[:-1]) if comma else " and ".join(parts[:-1])
    return f"{head} and {parts[-1]}"


def describe(scene: Scene) -> str:
    """The canonical description, unique per scene (the gallery's ground truth)."""
    return _join([canonical_object(obj) for obj in scene])


def paraphrase(scene: Scene, rng: np.random.Generator) -> str:
    """A random caption of the scene: other word choices, order and framing, same content."""
    order = rng.permutation(len(scene))
    parts = []
    for index in order:
        obj = scene[index]
        size = rng.choice(SIZE_WORDS[obj.size])
        where = rng.choice(POSITION_PHRASES[obj.position])
        noun = f"{size} {obj.colour} {obj.shape}"
        parts.append(
            f"{where} {_with_article(noun)}"
            if rng.random() < 0.2
            else f"{_with_article(noun)} {where}"
        )
    text = _join(parts, comma=bool(rng.random() < 0.5))
    return (rng.choice(PREFIXES) + text).strip()


@dataclass(frozen=True)
class Mention:
    """A partial caption's words about one object: always its shape, and some of its colour, size
    and position, never both of the last two. Full captions name size and position for every
    object, so a caption with a mention can be told from a complete description by its words."""

    obj: ShapeObject
    colour: bool
    size: bool
    position: bool

    def fits(self, other: ShapeObject) -> bool:
        named = [("shape", True), ("colour", self.colour), ("size", self.size)]
        named.append(("position", self.position))
        return all(getattr(other, name) == getattr(self.obj, name) for name, on in named if on)


def random_mentions(scene: Scene, rng: np.random.Generator) -> tuple[Mention, ...]:
    """One object of the scene (or two, three times in ten), each named by a random subset."""
    count = 2 if len(scene) > 1 and rng.random() < 0.3 else 1
    picked = rng.choice(len(scene), size=count, replace=False)
    mentions = []
    for index in picked:
        colour, detail = bool(rng.random() < 0.75), int(rng.choice(3, p=(0.5, 0.25, 0.25)))
        mentions.append(Mention(scene[int(index)], colour, detail == 1, detail == 2))
    return tuple(mentions)


def mentioned_in(mentions: tuple[Mention, ...], scene: Scene) -> bool:
    """Whether distinct objects of the scene fit every mention (so the partial caption is true)."""
    return any(
        all(m.fits(obj) for m, obj in zip(mentions, chosen, strict=False))
        for chosen in itertools.permutations(scene, len(mentions))
    )


def mention_phrase(mention: Mention, rng: np.random.Generator) -> str:
    obj = mention.obj
    words = [str(rng.choice(SIZE_WORDS[obj.size]))] if mention.size else []
    words += [obj.colour] if mention.colour else []
    noun = _with_article(" ".join([*words, obj.shape]))
    return f"{noun} {rng.choice(POSITION_PHRASES[obj.position])}" if mention.position else noun


def partial_caption(mentions: tuple[Mention, ...], rng: np.random.Generator) -> str:
    """A caption true of every scene that holds the mentioned objects ("a red circle")."""
    parts = [mention_phrase(mention, rng) for mention in mentions]
    return (rng.choice(PREFIXES) + _join(parts, comma=bool(rng.random() < 0.5))).strip()


def captions(scene: Scene, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [paraphrase(scene, rng) for _ in range(count)]


def title(scene: Scene) -> str:
    return ", ".join(f"{obj.colour} {obj.shape}" for obj in scene)


def split_of(scene: Scene) -> str:
    """Deterministic scene-level split: the same description always lands in the same split."""
    bucket = int(hashlib.md5(describe(scene).encode()).hexdigest(), 16) % 100
    if bucket < SPLIT_SHARES["test"]:
        return "test"
    if bucket < SPLIT_SHARES["test"] + SPLIT_SHARES["val"]:
        return "val"
    return "train"


COLOUR_NAMES = tuple(COLOURS)


def random_object(rng: np.random.Generator, position: str) -> ShapeObject:
    shape, colour, size = rng.integers((len(SHAPES), len(COLOURS), len(SIZES)))
    return ShapeObject(position, SHAPES[shape], COLOUR_NAMES[colour], SIZES[size])


def random_scene(
    rng: np.random.Generator, split: str | None = None, must_have: ShapeObject | None = None
) -> Scene:
    """A uniformly shaped random scene (1-3 objects), optionally of one split and containing an object."""
    while True:
        count = int(rng.integers(1, MAX_OBJECTS + 1))
        order, attributes = (
            rng.permutation(len(POSITIONS)),
            rng.integers((len(SHAPES), len(COLOURS), len(SIZES)), size=(count, 3)),
        )
        objects = [
            ShapeObject(POSITIONS[p], SHAPES[a[0]], COLOUR_NAMES[a[1]], SIZES[a[2]])
            for p, a in zip(order[:count], attributes, strict=True)
        ]
        if must_have is not None:
            objects = [obj for obj in objects if obj.position != must_have.position][
                : MAX_OBJECTS - 1
            ]
            objects.append(must_have)
        scene = make_scene(objects)
        if split is None or split_of(scene) == split:
            return scene


@dataclass(frozen=True)
class Edit:
    """One change turning a source scene into a target scene: `old` -> `new` (None for add/remove)."""

    kind: str
    old: ShapeObject | None
    new: ShapeObject | None

    def apply(self, scene: Scene) -> Scene:
        objects = [obj for obj in scene if obj != self.old]
        return make_scene(objects + ([self.new] if self.new else []))

    def inverse(self) -> Edit:
        kind = {"add": "remove", "remove": "add"}.get(self.kind, self.kind)
        return Edit(kind, self.new, self.old)


def possible_edits(scene: Scene) -> list[Edit]:
    """Every single edit of the six kinds that yields a valid scene."""
    edits = []
    free = [p for p in POSITIONS if p not in {obj.position for obj in scene}]
    for obj in scene:
        edits += [Edit("colour", obj, replace(obj, colour=c)) for c in COLOURS if c != obj.colour]
        edits += [Edit("shape", obj, replace(obj, shape=s)) for s in SHAPES if s != obj.shape]
        edits.append(
            Edit("size", obj, replace(obj, size="large" if obj.size == "small" else "small"))
        )
        edits += [Edit("move", obj, replace(obj, position=p)) for p in free]
        if len(scene) > 1:
            edits.append(Edit("remove", obj, None))
    if len(scene) < MAX_OBJECTS:
        for position in free:
            edits += [
                Edit("add", None, ShapeObject(position, s, c, z))
                for s in SHAPES
                for c in COLOURS
                for z in SIZES
            ]
    return edits


def sample_edit(
    scene: Scene,
    rng: np.random.Generator,
    split: str | None = None,
    kinds=EDIT_KINDS,
    exclude: Container[str] = frozenset(),
    edits: list[Edit] | None = None,
) -> Edit | None:
    """A random edit, kind first (so rare kinds are not drowned by 'add'), target in `split`."""
    by_kind: dict[str, list[Edit]] = {}
    for edit in possible_edits(scene) if edits is None else edits:
        by_kind.setdefault(edit.kind, []).append(edit)
    for kind in rng.permutation([k for k in kinds if k in by_kind]):
        options = by_kind[str(kind)]
        for index in rng.permutation(len(options)):
            edit = options[int(index)]
            target = edit.apply(scene)
            if (split is None or split_of(target) == split) and describe(target) not in exclude:
                return edit
    return None


def referring_expression(obj: ShapeObject, scene: Scene, rng: np.random.Generator) -> str:
    """A short phrase that picks out `obj` among the scene's objects (used in edit texts)."""
    forms = [
        lambda o: o.shape,
        lambda o: f"{o.colour} {o.shape}",
        lambda o: f"{o.shape} {POSITION_PHRASES[o.position][0]}",
        lambda o: f"{o.colour} {o.shape} {POSITION_PHRASES[o.position][0]}",
    ]
    unique = [form(obj) for form in forms if sum(form(other) == form(obj) for other in scene) == 1]
    return str(rng.choice(unique[:3]))


EDIT_TEMPLATES = {
    "colour": (
        "make the {ref} {colour}",
        "change the colour of the {ref} to {colour}",
        "the {ref} should be {colour}",
        "paint the {ref} {colour}",
        "turn the {ref} {colour}",
    ),
    "shape": (
        "turn the {ref} into {a_shape}",
        "make the {ref} {a_shape}",
        "change the {ref} to {a_shape}",
        "replace the {ref} with {a_shape} of the same colour",
        "the {ref} should be {a_shape}",
    ),
    "size": (
        "make the {ref} {bigger}",
        "the {ref} should be {size}",
        "{grow} the {ref}",
        "make the {ref} {size}",
    ),
    "add": (
        "add {a_new} {where}",
        "put {a_new} {where}",
        "also show {a_new} {where}",
        "include {a_new} {where}",
        "with an extra {new} {where}",
    ),
    "remove": (
        "remove the {ref}",
        "take away the {ref}",
        "delete the {ref}",
        "without the {ref}",
        "get rid of the {ref}",
    ),
    "move": (
        "move the {ref} {to}",
        "put the {ref} {where}",
        "the {ref} should be {where}",
        "shift the {ref} {to}",
    ),
}


def edit_text(edit: Edit, source: Scene, rng: np.random.Generator) -> str:
    """A natural-language modification text for the edit, phrased at random among templates."""
    template = str(rng.choice(EDIT_TEMPLATES[edit.kind]))
    values = {}
    if edit.old is not None:
        values["ref"] = referring_expression(edit.old, source, rng)
    if edit.new is not None:
        new = edit.new
        values.update(
            colour=new.colour,
            a_shape=_with_article(new.shape),
            size=new.size,
            bigger="bigger" if new.size == "large" else "smaller",
            grow="enlarge" if new.size == "large" else "shrink",
            new=new.phrase(),
            a_new=_with_article(new.phrase()),
            where=str(rng.choice(POSITION_PHRASES[new.position])),
            to=str(rng.choice(MOVE_PHRASES[new.position])),
        )
    return template.format(**values)


def _polygon(
    shape: str, cx: float, cy: float, half: float, angle: float
) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        points = [(x * half * 0.9, y * half * 0.9) for x, y in corners]
    elif shape == "triangle":
        points = [
            (half * math.cos(a), half * math.sin(a))
            for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
        points = [(x, y + half * 0.15) for x, y in points]
    elif shape == "star":
        points = []
        for k in range(10):
            radius = half if k % 2 == 0 else half * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            points.append((radius * math.cos(a), radius * math.sin(a)))
    else:  # circle
        points = [
            (half * math.cos(a), half * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, 48, endpoint=False)
        ]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], dtype=np.float32)
    base = base + rng.uniform(-10, 10, size=3)
    canvas = np.broadcast_to(base, (size, size, 3)).copy()
    texture = int(rng.integers(4))
    if texture == 1:  # fine noise
        canvas += rng.normal(0, 6, size=(size, size, 1))
    elif texture == 2:  # faint stripes
        period, phase = rng.uniform(6, 14) * size / IMAGE_SIZE, rng.uniform(0, 2 * math.pi)
        axis = np.arange(size)[None, :] if rng.random() < 0.5 else np.arange(size)[:, None]
        canvas += (5 * np.sin(2 * math.pi * axis / period + phase))[..., None]
    elif texture == 3:  # soft gradient
        ramp = np.linspace(-1, 1, size)
        canvas += (rng.uniform(6, 14) * (ramp[None, :] if rng.random() < 0.5 else ramp[:, None]))[
            ..., None
        ]
    return canvas


def render(scene: Scene, seed, size: int = IMAGE_SIZE) -> tuple[Image.Image, list[list[int]]]:
    """Draw the scene with seeded jitter. Returns the RGB image and each object's pixel box [x0,y0,x1,y1]."""
    rng = np.random.default_rng(seed)
    big = size * SUPERSAMPLE
    canvas = _background(rng, big)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    boxes = []
    for obj in scene:
        fx, fy = CENTRES[obj.position]
        cx = (fx + rng.uniform(-0.025, 0.025)) * big
        cy = (fy + rng.uniform(-0.025, 0.025)) * big
        half = HALF_SIZE[obj.size] * rng.uniform(0.9, 1.1) * big
        angle = 0.0 if obj.shape == "circle" else math.radians(rng.uniform(-12, 12))
        colour = tuple(int(np.clip(c + rng.integers(-14, 15), 0, 255)) for c in COLOURS[obj.colour])
        points = _polygon(obj.shape, cx, cy, half, angle)
        draw.polygon(points, fill=colour)
        xs, ys = [p[0] / SUPERSAMPLE for p in points], [p[1] / SUPERSAMPLE for p in points]
        boxes.append(
            [
                max(0, math.floor(min(xs))),
                max(0, math.floor(min(ys))),
                min(size, math.ceil(max(xs))),
                min(size, math.ceil(max(ys))),
            ]
        )
    return image.resize((size, size), Image.Resampling.LANCZOS), boxes


def object_records(scene: Scene, boxes: list[list[int]]) -> list[dict]:
    return [{**asdict(obj), "box": box} for obj, box in zip(scene, boxes, strict=True)]


@dataclass
class GalleryImage:
    name: str
    scene: Scene
    seed: int
    role: str  # reference | variant | text-distractor


@dataclass
class Triplet:
    pairid: int
    reference: str
    target: str
    caption: str
    kind: str
    set_id: str
    members: list[str]
    language: str = "en"


@dataclass
class SplitData:
    split: str
    images: list[GalleryImage]
    triplets: list[Triplet]

    def by_name(self) -> dict[str, GalleryImage]:
        return {image.name: image for image in self.images}


def build_split(split: str, sets: int, seed: int = 0) -> SplitData:
    """Gallery sets for one split: reference + 5 single-edit variants + 2 text distractors each.

    Triplets go both ways between the reference and each variant (an edit and its inverse), with
    phrasings drawn at random. Descriptions are unique over the whole split gallery.
    """
    rng = np.random.default_rng([seed, 7, len(split), sum(map(ord, split))])
    images: list[GalleryImage] = []
    triplets: list[Triplet] = []
    used: set[str] = set()
    prefix = "dev" if split == "val" else split

    def add(name: str, scene: Scene, role: str) -> None:
        used.add(describe(scene))
        images.append(GalleryImage(name, scene, int(rng.integers(2**31)), role))

    set_index = 0
    while set_index < sets:
        reference = random_scene(rng, split)
        edits = _set_edits(reference, rng, split, used)
        if edits is None:
            continue
        set_id = f"{prefix}-{set_index:04d}"
        names = [f"{set_id}-img{k}" for k in range(SET_VARIANTS + 1)]
        add(names[0], reference, "reference")
        for name, edit in zip(names[1:], edits, strict=True):
            add(name, edit.apply(reference), "variant")
        for k in range(TEXT_DISTRACTORS):
            anchor = edits[k].new or edits[k].old
            for _ in range(200):
                distractor = random_scene(rng, split, must_have=anchor)
                if describe(distractor) not in used:
                    add(f"{set_id}-dis{k}", distractor, "text-distractor")
                    break
        for name, edit in zip(names[1:], edits, strict=True):
            variant = edit.apply(reference)
            for source, target, change, source_scene in (
                (names[0], name, edit, reference),
                (name, names[0], edit.inverse(), variant),
            ):
                triplets.append(
                    Triplet(
                        len(triplets),
                        source,
                        target,
                        edit_text(change, source_scene, rng),
                        change.kind,
                        set_id,
                        names,
                    )
                )
        set_index += 1
    return SplitData(split, images, triplets)


class _Union:
    """Membership in either of two sets, without building their union."""

    def __init__(self, *sets: set[str]):
        self.sets = sets

    def __contains__(self, item: str) -> bool:
        return any(item in part for part in self.sets)


def _set_edits(
    reference: Scene, rng: np.random.Generator, split: str, used: set[str]
) -> list[Edit] | None:
    """Five edits of distinct kinds whose results are new scenes of the split, or None to resample.

    Kinds are drawn before edits, so kinds with few options (size) are as common as 'add'.
    """
    if describe(reference) in used:
        return None
    resized = [
        make_scene(
            [o for o in reference if o != obj] + [replace(obj, size=SIZES[obj.size == "small"])]
        )
        for obj in reference
    ]
    if not any(split_of(scene) == split for scene in resized):
        return None  # cheap early exit: size edits are the rarest to land in the split
    options = possible_edits(reference)
    feasible = [kind for kind in EDIT_KINDS if any(edit.kind == kind for edit in options)]
    if len(feasible) < SET_VARIANTS:
        return None
    kinds = [str(kind) for kind in rng.permutation(feasible)[:SET_VARIANTS]]
    kinds.sort(key=lambda kind: kind != "size")  # the rarest kind first: fail fast
    claimed = {describe(reference)}
    taken = _Union(used, claimed)  # not set(used) | claimed: copying is quadratic in large splits
    edits = []
    for kind in kinds:
        edit = sample_edit(reference, rng, split, kinds=(kind,), exclude=taken, edits=options)
        if edit is None:
            return None
        claimed.add(describe(edit.apply(reference)))
        edits.append(edit)
    rng.shuffle(edits)
    return edits


def cirr_captions(data: SplitData) -> list[dict]:
    """Triplets in the CIRR `cap.rc2.{split}.json` layout."""
    rows = []
    for triplet in data.triplets:
        rows.append(
            {
                "pairid": triplet.pairid,
                "reference": triplet.reference,
                "target_hard": triplet.target,
                "target_soft": {triplet.target: 1.0},
                "caption": triplet.caption,
                "img_set": {
                    "id": triplet.set_id,
                    "members": triplet.members,
                    "reference_rank": triplet.members.index(triplet.reference),
                    "target_rank": triplet.members.index(triplet.target),
                },
                "edit": triplet.kind,  # extra field (CIRR readers ignore unknown keys)
                **({"language": triplet.language} if triplet.language != "en" else {}),
            }
        )
    return rows


METADATA_COLUMNS = (
    "id",
    "file",
    "title",
    "description",
    "split",
    "role",
    "count",
    "shapes",
    "colours",
    "sizes",
    "positions",
    "tags",
    "captions",
    "objects",
)


def metadata_row(image: GalleryImage, file: str, boxes: list[list[int]], split: str) -> dict:
    scene = image.scene
    tags = sorted(
        {obj.shape for obj in scene}
        | {obj.colour for obj in scene}
        | {obj.size for obj in scene}
        | {obj.position for obj in scene}
    )
    return {
        "id": image.name,
        "file": file,
        "title": title(scene),
        "description": describe(scene),
        "split": split,
        "role": image.role,
        "count": len(scene),
        "shapes": "; ".join(obj.shape for obj in scene),
        "colours": "; ".join(obj.colour for obj in scene),
        "sizes": "; ".join(obj.size for obj in scene),
        "positions": "; ".join(obj.position for obj in scene),
        "tags": "; ".join(tags),
        "captions": json.dumps(captions(scene, 3, image.seed)),
        "objects": json.dumps(object_records(scene, boxes)),
    }


def write_dataset(
    out: str | Path,
    splits: dict[str, int],
    seed: int = 0,
    size: int = IMAGE_SIZE,
    progress: Callable | None = None,
    rephrase: Callable[[SplitData], SplitData] | None = None,
) -> dict[str, SplitData]:
    """Render the splits (name -> number of sets) in the CIRR layout plus `metadata.csv`.

    `rephrase` rewrites a split's edit requests (other languages) before they are written."""
    out = Path(out)
    (out / "captions").mkdir(parents=True, exist_ok=True)
    (out / "image_splits").mkdir(parents=True, exist_ok=True)
    rows, result = [], {}
    for split, sets in splits.items():
        data = build_split(split, sets, seed)
        data = rephrase(data) if rephrase else data
        folder = out / split
        folder.mkdir(exist_ok=True)
        relpaths = {}
        for image in data.images:
            picture, boxes = render(image.scene, image.seed, size)
            picture.save(folder / f"{image.name}.png", optimize=True)
            relpaths[image.name] = f"./{split}/{image.name}.png"
            rows.append(metadata_row(image, f"{split}/{image.name}.png", boxes, split))
            if progress:
                progress()
        (out / "captions" / f"cap.rc2.{split}.json").write_text(
            json.dumps(cirr_captions(data), indent=1)
        )
        (out / "image_splits" / f"split.rc2.{split}.json").write_text(
            json.dumps(relpaths, indent=1)
        )
        result[split] = data
    with (out / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "README.md").write_text(_dataset_readme(splits, seed, size))
    return result


def _dataset_readme(splits: dict[str, int], seed: int, size: int) -> str:
    args = " ".join(f"--{name}-sets {count}" for name, count in splits.items())
    return (
        "# Shapes world (generated)\n\n"
        "Procedurally generated scenes with known ground truth, in the CIRR on-disk format.\n"
        f"Regenerate: `python -m retrieval shapes generate --out DIR --seed {seed} --size {size} {args}`\n\n"
        "- `captions/cap.rc2.{split}.json`: composed-retrieval triplets (CIRR fields + `edit` kind)\n"
        "- `image_splits/split.rc2.{split}.json`: image name -> relative path\n"
        "- `metadata.csv`: id,file,title,description + attribute columns; `objects` is JSON with each\n"
        "  object's shape, colour, size, position and pixel box [x0, y0, x1, y1]\n"
    )


def read_split(root: str | Path, split: str) -> tuple[list[dict], dict[str, Path]]:
    """CIRR triplets and name -> absolute image path of one split (any CIRR-format dataset)."""
    root = Path(root)
    triplets = json.loads((root / "captions" / f"cap.rc2.{split}.json").read_text())
    relpaths = json.loads((root / "image_splits" / f"split.rc2.{split}.json").read_text())
    return triplets, {name: (root / rel).resolve() for name, rel in relpaths.items()}


def scene_of_row(row: dict) -> Scene:
    """The scene a `metadata.csv` row records (its `objects` column)."""
    objects = json.loads(row["objects"])
    return make_scene(
        ShapeObject(o["position"], o["shape"], o["colour"], o["size"]) for o in objects
    )


def read_scenes(root: str | Path, split: str | None = None) -> dict[str, Scene]:
    """Every item's scene in a generated dataset, by id."""
    return {row["id"]: scene_of_row(row) for row in read_metadata_rows(root, split)}


def read_metadata_rows(root: str | Path, split: str | None = None) -> list[dict]:
    with (Path(root) / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row for row in rows if split is None or row["split"] == split]


def render_unlabeled(split: str, count: int, seed: int = 0) -> list[Image.Image]:
    """`count` fresh scenes of one split, rendered without any text: unlabeled images (what phi trains on)."""
    rng = np.random.default_rng([seed, 2024])
    scenes = [random_scene(rng, split) for _ in range(count)]
    return [render(scene, int(rng.integers(2**31)))[0] for scene in scenes]
