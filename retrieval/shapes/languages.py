"""Shapes captions and edit requests in Italian, French, German and Spanish.

English lives in `world.py` and stays byte for byte what the shipped dataset was generated with;
`describe`, `paraphrase` and `edit_text` here take a language code and hand "en" to it. The other
four share one generator: tables of words per language, plus the noun phrase, which is where the
grammar is (gender and number agreement, article elision, German case endings, word order).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from retrieval.data.composed import ComposedSplit
from retrieval.errors import BadInput
from retrieval.shapes import world
from retrieval.shapes.world import Edit, Mention, Scene, ShapeObject, SplitData, Triplet

LANGUAGES = ("en", "it", "fr", "de", "es")
LANGUAGE_NAMES = {
    "en": "English",
    "it": "Italiano",
    "fr": "Français",
    "de": "Deutsch",
    "es": "Español",
}

VOWELS = "aeiouàâéèêëîïôùû"
CASES = ("nom", "acc", "dat")  # only German tells them apart


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return str(options[int(rng.integers(len(options)))])


@dataclass(frozen=True)
class Language:
    """The words of one language; `noun_phrase` puts them in order and makes them agree.

    Adjectives are (masculine, feminine) pairs; German ones are stems plus "declines or not".
    """

    code: str
    nouns: dict[str, tuple[str, str]]  # shape -> (noun, gender m/f/n)
    colours: dict[str, tuple[str, str]]
    sizes: dict[str, tuple[tuple[str, str], ...]]  # size -> synonyms; the first is canonical
    positions: dict[str, tuple[str, ...]]  # where an object is; the first is canonical
    moves: dict[str, tuple[str, ...]]  # where to move it
    prefixes: tuple[str, ...]
    templates: dict[str, tuple[str, ...]]
    comparatives: dict[str, tuple[str, str]]  # size -> (masculine, feminine) "bigger"/"smaller"
    grow: dict[str, str]  # size -> imperative verb that makes it so
    and_word: str
    articles: dict[str, tuple[str, str]] = field(default_factory=dict)  # a/the -> (m, f)
    elisions: dict[tuple[str, str], str] = field(default_factory=dict)  # before a vowel: "l'"
    ref_positions: dict[str, str] = field(default_factory=dict)  # "de la izquierda", if not `where`
    size_first: bool = True  # "un grande cerchio rosso" (it, fr) vs "un círculo rojo grande" (es)

    def gender(self, obj: ShapeObject) -> str:
        return self.nouns[obj.shape][1]

    def agree(self, forms: tuple[str, str], gender: str) -> str:
        return forms[gender == "f"]

    def article(self, kind: str, gender: str, following: str) -> str:
        word = self.agree(self.articles[kind], gender)
        elided = self.elisions.get((kind, gender), "")
        return elided if elided and following[0] in VOWELS else word + " "

    def noun_phrase(
        self,
        obj: ShapeObject,
        size: tuple[str, str] | None,
        kind: str = "a",
        case: str = "nom",
        colour: bool = True,
    ) -> str:
        noun, gender = self.nouns[obj.shape]
        words = [noun]
        if colour:
            words.append(self.agree(self.colours[obj.colour], gender))
        if size is not None:
            adjective = self.agree(size, gender)
            words = [adjective, *words] if self.size_first else [*words, adjective]
        body = " ".join(words)
        return self.article(kind, gender, body) + body

    def where(self, position: str, rng: np.random.Generator | None = None) -> str:
        options = self.positions[position]
        return options[0] if rng is None else _pick(rng, options)

    def canonical_object(self, obj: ShapeObject) -> str:
        return f"{self.noun_phrase(obj, self.sizes[obj.size][0])} {self.where(obj.position)}"

    def join(self, parts: list[str], comma: bool = True) -> str:
        if len(parts) == 1:
            return parts[0]
        head = ", ".join(parts[:-1]) if comma else f" {self.and_word} ".join(parts[:-1])
        return f"{head} {self.and_word} {parts[-1]}"

    def describe(self, scene: Scene) -> str:
        return self.join([self.canonical_object(obj) for obj in scene])

    def prefix_case(self, prefix: str) -> str:
        return "nom"

    def paraphrase(self, scene: Scene, rng: np.random.Generator) -> str:
        prefix = _pick(rng, self.prefixes)
        case = self.prefix_case(prefix)
        parts = []
        for index in rng.permutation(len(scene)):
            obj = scene[int(index)]
            size = self.sizes[obj.size][int(rng.integers(len(self.sizes[obj.size])))]
            noun, where = self.noun_phrase(obj, size, "a", case), self.where(obj.position, rng)
            position_first = not prefix and rng.random() < 0.2
            parts.append(f"{where} {noun}" if position_first else f"{noun} {where}")
        return prefix + self.join(parts, comma=bool(rng.random() < 0.5))

    def mention(self, mention: Mention, rng: np.random.Generator, case: str) -> str:
        obj, sizes = mention.obj, self.sizes[mention.obj.size]
        size = sizes[int(rng.integers(len(sizes)))] if mention.size else None
        noun = self.noun_phrase(obj, size, "a", case, colour=mention.colour)
        return f"{noun} {self.where(obj.position, rng)}" if mention.position else noun

    def partial_caption(self, mentions: tuple[Mention, ...], rng: np.random.Generator) -> str:
        prefix = _pick(rng, self.prefixes)
        parts = [self.mention(m, rng, self.prefix_case(prefix)) for m in mentions]
        return prefix + self.join(parts, comma=bool(rng.random() < 0.5))

    def reference_form(self, obj: ShapeObject, scene: Scene, rng: np.random.Generator):
        """Which of colour and position the phrase names, so that it picks out `obj` alone."""
        forms = [(False, False), (True, False), (False, True), (True, True)]

        def key(o: ShapeObject, form: tuple[bool, bool]):
            return (o.shape, o.colour if form[0] else None, o.position if form[1] else None)

        unique = [f for f in forms if sum(key(o, f) == key(obj, f) for o in scene) == 1][:3]
        return unique[int(rng.integers(len(unique)))]

    def reference(self, obj: ShapeObject, form: tuple[bool, bool], case: str) -> str:
        with_colour, with_position = form
        phrase = self.noun_phrase(obj, None, "the", case, colour=with_colour)
        where = self.ref_positions.get(obj.position) or self.where(obj.position)
        return f"{phrase} {where}" if with_position else phrase

    def edit_values(self, edit: Edit, source: Scene, rng: np.random.Generator) -> dict[str, str]:
        values = {}
        if edit.old is not None:
            form = self.reference_form(edit.old, source, rng)
            values.update({f"ref_{case}": self.reference(edit.old, form, case) for case in CASES})
        if edit.new is not None:
            new, gender = edit.new, self.gender(edit.new)
            size = self.sizes[new.size][0]
            values.update(
                colour=self.agree(self.colours[new.colour], gender),
                colour_m=self.colours[new.colour][0],
                a_shape=self.noun_phrase(new, None, "a", "acc", colour=False),
                a_shape_nom=self.noun_phrase(new, None, "a", "nom", colour=False),
                size=self.agree(size, gender),
                bigger=self.agree(self.comparatives[new.size], gender),
                grow=self.grow[new.size],
                a_new=self.noun_phrase(new, size, "a", "acc"),
                where=self.where(new.position, rng),
                to=_pick(rng, self.moves[new.position]),
            )
        return values

    def edit_text(self, edit: Edit, source: Scene, rng: np.random.Generator) -> str:
        template = _pick(rng, self.templates[edit.kind])
        return template.format(**self.edit_values(edit, source, rng))


class German(Language):
    """Case endings after ein/der (only masculine and neuter nouns occur: no feminine shape)."""

    ARTICLES = {
        ("a", "nom"): ("ein", "ein"),
        ("a", "acc"): ("einen", "ein"),
        ("a", "dat"): ("einem", "einem"),
        ("the", "nom"): ("der", "das"),
        ("the", "acc"): ("den", "das"),
        ("the", "dat"): ("dem", "dem"),
    }
    ENDINGS = {
        ("a", "nom"): ("er", "es"),
        ("a", "acc"): ("en", "es"),
        ("a", "dat"): ("en", "en"),
        ("the", "nom"): ("e", "e"),
        ("the", "acc"): ("en", "e"),
        ("the", "dat"): ("en", "en"),
    }

    def agree(self, forms: tuple[str, str], gender: str) -> str:
        return forms[0]  # predicative adjectives do not decline

    def declined(self, adjective: tuple[str, str], kind: str, case: str, gender: str) -> str:
        stem, declines = adjective
        return stem + self.ENDINGS[kind, case][gender == "n"] if declines else stem

    def noun_phrase(self, obj, size, kind="a", case="nom", colour=True) -> str:
        noun, gender = self.nouns[obj.shape]
        words = [self.ARTICLES[kind, case][gender == "n"]]
        if size is not None:
            words.append(self.declined(size, kind, case, gender))
        if colour:
            words.append(self.declined(self.colours[obj.colour], kind, case, gender))
        return " ".join([*words, noun])

    def prefix_case(self, prefix: str) -> str:
        return "dat" if prefix.endswith("mit ") else "nom"


def _same(*words: str) -> dict[str, tuple[str, str]]:
    return {colour: (word, word) for colour, word in zip(world.COLOURS, words, strict=True)}


ITALIAN = Language(
    code="it",
    nouns={
        "circle": ("cerchio", "m"),
        "square": ("quadrato", "m"),
        "triangle": ("triangolo", "m"),
        "star": ("stella", "f"),
    },
    colours={
        **_same("rosso", "verde", "blu", "giallo", "viola", "arancione", "rosa", "ciano"),
        "red": ("rosso", "rossa"),
        "yellow": ("giallo", "gialla"),
    },
    sizes={
        "small": (("piccolo", "piccola"),),
        "large": (("grande", "grande"), ("grosso", "grossa")),
    },
    positions={
        "left": ("a sinistra", "sulla sinistra"),
        "right": ("a destra", "sulla destra"),
        "top": ("in alto", "in cima"),
        "bottom": ("in basso", "in fondo"),
        "centre": ("al centro", "nel mezzo"),
    },
    moves={
        "left": ("a sinistra", "verso sinistra"),
        "right": ("a destra", "verso destra"),
        "top": ("in alto", "verso l'alto"),
        "bottom": ("in basso", "verso il basso"),
        "centre": ("al centro", "nel mezzo"),
    },
    prefixes=("", "", "un'immagine con ", "una foto con ", "un disegno con ", "una scena con "),
    templates={
        "colour": (
            "rendi {ref_acc} {colour}",
            "colora {ref_acc} di {colour_m}",
            "{ref_nom} deve essere {colour}",
            "dipingi {ref_acc} di {colour_m}",
        ),
        "shape": (
            "trasforma {ref_acc} in {a_shape}",
            "sostituisci {ref_acc} con {a_shape} dello stesso colore",
            "{ref_nom} deve diventare {a_shape}",
            "cambia {ref_acc} in {a_shape}",
        ),
        "size": ("rendi {ref_acc} {bigger}", "{grow} {ref_acc}", "{ref_nom} deve essere {size}"),
        "add": ("aggiungi {a_new} {where}", "metti {a_new} {where}", "inserisci {a_new} {where}"),
        "remove": ("rimuovi {ref_acc}", "togli {ref_acc}", "elimina {ref_acc}", "senza {ref_acc}"),
        "move": (
            "sposta {ref_acc} {to}",
            "metti {ref_acc} {where}",
            "{ref_nom} deve stare {where}",
        ),
    },
    comparatives={"large": ("più grande", "più grande"), "small": ("più piccolo", "più piccola")},
    grow={"large": "ingrandisci", "small": "rimpicciolisci"},
    and_word="e",
    articles={"a": ("un", "una"), "the": ("il", "la")},
    elisions={("a", "f"): "un'", ("the", "m"): "l'", ("the", "f"): "l'"},
)

FRENCH = Language(
    code="fr",
    nouns={
        "circle": ("cercle", "m"),
        "square": ("carré", "m"),
        "triangle": ("triangle", "m"),
        "star": ("étoile", "f"),
    },
    colours={
        **_same("rouge", "vert", "bleu", "jaune", "violet", "orange", "rose", "cyan"),
        "green": ("vert", "verte"),
        "blue": ("bleu", "bleue"),
        "purple": ("violet", "violette"),
    },
    sizes={"small": (("petit", "petite"),), "large": (("grand", "grande"), ("gros", "grosse"))},
    positions={
        "left": ("à gauche", "sur la gauche"),
        "right": ("à droite", "sur la droite"),
        "top": ("en haut", "tout en haut"),
        "bottom": ("en bas", "tout en bas"),
        "centre": ("au centre", "au milieu"),
    },
    moves={
        "left": ("à gauche", "vers la gauche"),
        "right": ("à droite", "vers la droite"),
        "top": ("en haut", "vers le haut"),
        "bottom": ("en bas", "vers le bas"),
        "centre": ("au centre", "au milieu"),
    },
    prefixes=("", "", "une image avec ", "une photo avec ", "un dessin avec ", "une scène avec "),
    templates={
        "colour": (
            "rends {ref_acc} {colour}",
            "peins {ref_acc} en {colour_m}",
            "{ref_nom} doit être {colour}",
            "colorie {ref_acc} en {colour_m}",
        ),
        "shape": (
            "transforme {ref_acc} en {a_shape}",
            "remplace {ref_acc} par {a_shape} de la même couleur",
            "{ref_nom} doit devenir {a_shape}",
        ),
        "size": ("rends {ref_acc} {bigger}", "{grow} {ref_acc}", "{ref_nom} doit être {size}"),
        "add": ("ajoute {a_new} {where}", "mets {a_new} {where}", "place {a_new} {where}"),
        "remove": ("enlève {ref_acc}", "supprime {ref_acc}", "retire {ref_acc}", "sans {ref_acc}"),
        "move": ("déplace {ref_acc} {to}", "mets {ref_acc} {where}", "{ref_nom} doit être {where}"),
    },
    comparatives={"large": ("plus grand", "plus grande"), "small": ("plus petit", "plus petite")},
    grow={"large": "agrandis", "small": "rapetisse"},
    and_word="et",
    articles={"a": ("un", "une"), "the": ("le", "la")},
    elisions={("the", "m"): "l'", ("the", "f"): "l'"},
)

SPANISH = Language(
    code="es",
    nouns={
        "circle": ("círculo", "m"),
        "square": ("cuadrado", "m"),
        "triangle": ("triángulo", "m"),
        "star": ("estrella", "f"),
    },
    colours={
        **_same("rojo", "verde", "azul", "amarillo", "morado", "naranja", "rosa", "cian"),
        "red": ("rojo", "roja"),
        "yellow": ("amarillo", "amarilla"),
        "purple": ("morado", "morada"),
    },
    sizes={
        "small": (("pequeño", "pequeña"), ("chico", "chica")),
        "large": (("grande", "grande"), ("enorme", "enorme")),
    },
    positions={
        "left": ("a la izquierda", "en el lado izquierdo"),
        "right": ("a la derecha", "en el lado derecho"),
        "top": ("arriba", "en la parte de arriba"),
        "bottom": ("abajo", "en la parte de abajo"),
        "centre": ("en el centro", "en medio"),
    },
    moves={
        "left": ("a la izquierda", "hacia la izquierda"),
        "right": ("a la derecha", "hacia la derecha"),
        "top": ("arriba", "hacia arriba"),
        "bottom": ("abajo", "hacia abajo"),
        "centre": ("al centro", "hacia el centro"),
    },
    prefixes=("", "", "una imagen con ", "una foto con ", "un dibujo con ", "una escena con "),
    templates={
        "colour": (
            "pinta {ref_acc} de {colour_m}",
            "colorea {ref_acc} de {colour_m}",
            "{ref_nom} debe ser {colour}",
            "cambia {ref_acc} a {colour_m}",
        ),
        "shape": (
            "convierte {ref_acc} en {a_shape}",
            "cambia {ref_acc} por {a_shape} del mismo color",
            "{ref_nom} debe ser {a_shape}",
        ),
        "size": ("haz {ref_acc} {bigger}", "{grow} {ref_acc}", "{ref_nom} debe ser {size}"),
        "add": ("añade {a_new} {where}", "agrega {a_new} {where}", "pon {a_new} {where}"),
        "remove": ("quita {ref_acc}", "elimina {ref_acc}", "borra {ref_acc}", "sin {ref_acc}"),
        "move": ("mueve {ref_acc} {to}", "pon {ref_acc} {where}", "{ref_nom} debe estar {where}"),
    },
    comparatives={"large": ("más grande", "más grande"), "small": ("más pequeño", "más pequeña")},
    grow={"large": "agranda", "small": "achica"},
    and_word="y",
    articles={"a": ("un", "una"), "the": ("el", "la")},
    size_first=False,
    ref_positions={
        "left": "de la izquierda",
        "right": "de la derecha",
        "top": "de arriba",
        "bottom": "de abajo",
        "centre": "del centro",
    },
)

GERMAN = German(
    code="de",
    nouns={
        "circle": ("Kreis", "m"),
        "square": ("Quadrat", "n"),
        "triangle": ("Dreieck", "n"),
        "star": ("Stern", "m"),
    },
    colours={
        colour: (stem, colour in ("red", "green", "blue", "yellow"))
        for colour, stem in zip(
            world.COLOURS,
            ("rot", "grün", "blau", "gelb", "lila", "orange", "rosa", "türkis"),
            strict=True,
        )
    },
    sizes={
        "small": (("klein", True), ("winzig", True)),
        "large": (("groß", True), ("riesig", True)),
    },
    positions={
        "left": ("links", "auf der linken Seite"),
        "right": ("rechts", "auf der rechten Seite"),
        "top": ("oben", "am oberen Rand"),
        "bottom": ("unten", "am unteren Rand"),
        "centre": ("in der Mitte", "mittig"),
    },
    moves={
        "left": ("nach links", "ganz nach links"),
        "right": ("nach rechts", "ganz nach rechts"),
        "top": ("nach oben", "ganz nach oben"),
        "bottom": ("nach unten", "ganz nach unten"),
        "centre": ("in die Mitte", "in die Bildmitte"),
    },
    prefixes=("", "", "ein Bild mit ", "ein Foto mit ", "eine Zeichnung mit ", "eine Szene mit "),
    templates={
        "colour": (
            "mach {ref_acc} {colour}",
            "färbe {ref_acc} {colour}",
            "{ref_nom} soll {colour} sein",
            "male {ref_acc} {colour} an",
        ),
        "shape": (
            "mach aus {ref_dat} {a_shape}",
            "ersetze {ref_acc} durch {a_shape} in derselben Farbe",
            "{ref_nom} soll {a_shape_nom} werden",
        ),
        "size": ("mach {ref_acc} {bigger}", "{grow} {ref_acc}", "{ref_nom} soll {size} sein"),
        "add": (
            "füge {a_new} {where} hinzu",
            "ergänze {a_new} {where}",
            "setze {a_new} {where} dazu",
        ),
        "remove": (
            "entferne {ref_acc}",
            "lösche {ref_acc}",
            "nimm {ref_acc} weg",
            "ohne {ref_acc}",
        ),
        "move": (
            "verschiebe {ref_acc} {to}",
            "schiebe {ref_acc} {to}",
            "{ref_nom} soll {where} sein",
        ),
    },
    comparatives={"large": ("größer", "größer"), "small": ("kleiner", "kleiner")},
    grow={"large": "vergrößere", "small": "verkleinere"},
    and_word="und",
)

GRAMMARS = {grammar.code: grammar for grammar in (ITALIAN, FRENCH, GERMAN, SPANISH)}


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise BadInput(
            f"unknown language {language!r}: the Shapes world speaks {', '.join(LANGUAGES)}"
        )
    return language


def parse_languages(text: str) -> tuple[str, ...]:
    """A command line's "en,it,fr" as checked codes, so a typo fails before any work."""
    return tuple(check_language(code.strip()) for code in text.split(",") if code.strip())


def describe(scene: Scene, language: str = "en") -> str:
    """The canonical description in a language (unique per scene in each language)."""
    if check_language(language) == "en":
        return world.describe(scene)
    return GRAMMARS[language].describe(scene)


def paraphrase(scene: Scene, rng: np.random.Generator, language: str = "en") -> str:
    if check_language(language) == "en":
        return world.paraphrase(scene, rng)
    return GRAMMARS[language].paraphrase(scene, rng)


def partial_caption(
    mentions: tuple[Mention, ...], rng: np.random.Generator, language: str = "en"
) -> str:
    if check_language(language) == "en":
        return world.partial_caption(mentions, rng)
    return GRAMMARS[language].partial_caption(mentions, rng)


def edit_text(edit: Edit, source: Scene, rng: np.random.Generator, language: str = "en") -> str:
    if check_language(language) == "en":
        return world.edit_text(edit, source, rng)
    return GRAMMARS[language].edit_text(edit, source, rng)


def edit_between(source: Scene, target: Scene, kind: str) -> Edit:
    """The single edit that turns `source` into `target` (what a stored triplet records)."""
    removed = [obj for obj in source if obj not in target]
    added = [obj for obj in target if obj not in source]
    if len(removed) > 1 or len(added) > 1 or not (removed or added):
        raise ValueError(f"not a single edit: {source} -> {target}")
    return Edit(kind, removed[0] if removed else None, added[0] if added else None)


def triplet_caption(triplet: Triplet, scenes: dict[str, Scene], language: str) -> str:
    """A stored triplet's edit request in `language` (English: the stored caption itself)."""
    if check_language(language) == "en":
        return triplet.caption
    source = scenes[triplet.reference]
    edit = edit_between(source, scenes[triplet.target], triplet.kind)
    return edit_text(edit, source, np.random.default_rng([triplet.pairid, 31]), language)


def split_in_language(
    split: ComposedSplit, scenes: dict[str, Scene], language: str
) -> ComposedSplit:
    """A stored Shapes split (CIRR layout) with every edit request rephrased in `language`: the
    same gallery and the same edits, so the languages are measured on equal terms."""
    queries = []
    for query in split.queries:
        kind = query.extra.get("edit", "")
        stored = Triplet(
            int(query.id), query.reference, query.targets[0], query.captions[0], kind, "", []
        )
        queries.append(replace(query, captions=[triplet_caption(stored, scenes, language)]))
    return replace(split, queries=queries)


def in_languages(data: SplitData, languages: tuple[str, ...]) -> SplitData:
    """The split with triplet i's edit request in languages[i % n]: every language sees every
    kind of edit, and the English ones stay the stored captions."""
    scenes = {image.name: image.scene for image in data.images}
    triplets = []
    for triplet in data.triplets:
        language = check_language(languages[triplet.pairid % len(languages)])
        caption = triplet_caption(triplet, scenes, language)
        triplets.append(replace(triplet, caption=caption, language=language))
    return replace(data, triplets=triplets)
