"""64x64 scenes of one or two objects, their prompts, and the one parser that reads them.

The grammar (``parse`` accepts exactly this; case, spacing, "an" for "a" and a trailing full stop are free):

    scene   = object PLACE "on a" COLOR "background"               one object
            | object RELATION object "on a" COLOR "background"     two objects
    object  = "a" SIZE COLOR SHAPE
    SIZE    = small | big
    PLACE   = on the left | on the right | at the top | at the bottom | in the centre
    RELATION = left of | right of | above | below

    "a big red star on the left on a white background"
    "a small red star left of a big blue circle on a white background"

Every word is required (a prompt with no size or no place is refused, so every attribute of every image can
be checked), each place has exactly one wording, and two rules keep every picture unambiguous: an object never
has the background's colour (it would not show), and two objects differ in colour or shape (same colour and
shape in another size would leave "which one is left?" to guesswork). 155 120 prompts in all (``all_prompts``).

Drawing: SIZE is an object's extent, the side of the square its shape just fills: small 12-16 px, big 22-26 px
(uniform within the class). Objects stay MARGIN px clear of the border and, in pairs, GAP px clear of each
other along the relation's axis, so even two big objects side by side fit, and the relation is never
ambiguous: the centres differ at least twice as much along its axis as across it. A single object "on the
left" sits 11 px or more left of the middle and at most 5 px off the horizontal midline; "in the centre" at
most 4 px from the middle either way. Colours jitter by up to +-12 per channel and edges are anti-aliased by
supersampling, as in minisd.data (whose colours and shape tests these are).

    images, prompts = make_batch(256, np.random.default_rng(0))   # (256, 3, 64, 64) float32 in [-1, 1]
    draw("a big red star on the left on a white background", rng)  # (64, 64, 3) uint8
"""

from dataclasses import dataclass

import numpy as np

from minisd.data import _INSIDE, COLOR_JITTER, COLORS, SHAPES  # _INSIDE: its "is (u, v) in the shape?" tests

SIZE = 64
SIZES = {"small": (12.0, 16.0), "big": (22.0, 26.0)}  # extent in px, uniform within the class
PLACES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
# Two objects: "A left of B" gives A the place "left" and B the place "right": each object's side of the other.
RELATIONS = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}

MARGIN = 3.0  # px of background between any object and the border (the checker reads the border)
GAP = 4.0  # px of background between two objects along their relation's axis
CENTRE_JITTER = 4.0  # "in the centre": the centre moves up to this far in x and in y
SIDE_OFFSET = 11.0  # "on the left": at least this far left of the middle ...
ACROSS_JITTER = 5.0  # ... and at most this far above or below the horizontal midline
PAIR_ACROSS_JITTER = 4.0  # two objects: each one's offset across the relation's axis
SUPERSAMPLE = 4
WINDOW = 28  # px: every object's shape is evaluated in a window this wide around it, not over the image


class PromptError(ValueError):
    """A prompt outside the grammar: one line naming the word, its position and what is allowed there."""


@dataclass(frozen=True)
class Object:
    color: str
    shape: str
    size: str  # "small" or "big"
    place: str  # one object: its region of the image; two: its side of the other object (see RELATIONS)


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Object, ...]  # one or two

    @property
    def prompt(self):
        """The canonical sentence for this scene (what ``parse`` reads back into it)."""
        first, *rest = (f"a {o.size} {o.color} {o.shape}" for o in self.objects)
        where = PLACES[self.objects[0].place] if not rest else f"{RELATIONS[self.objects[0].place]} {rest[0]}"
        return f"{first} {where} on a {self.background} background"


def words_of(prompt):
    """The words of a prompt as the grammar reads them: lower case, any spacing, "an" as "a", no final full stop."""
    text = prompt.lower().strip()
    text = text[:-1] if text.endswith(".") else text
    return ["a" if word == "an" else word for word in text.split()]


class _Choice:
    """The phrases (of one or more words) allowed at one point of the grammar, and the value of each."""

    def __init__(self, what, values):
        self.what = what
        self.options = {tuple(phrase.split()): value for phrase, value in values.items()}
        self.follow = {}  # the words of a phrase so far -> the words that may come next
        for phrase in self.options:
            for k in range(len(phrase)):
                self.follow.setdefault(phrase[:k], set()).add(phrase[k])

    def continuing(self, got):
        return [" ".join(phrase) for phrase in self.options if phrase[: len(got)] == got]


_A, _ON, _BACKGROUND = (_Choice(repr(word), {word: None}) for word in ("a", "on", "background"))
_SIZE = _Choice("a size", {size: size for size in SIZES})
_COLOR = _Choice("a colour", {color: color for color in COLORS})
_SHAPE = _Choice("a shape", {shape: shape for shape in SHAPES})
_WHERE = _Choice(
    "a place or a relation",
    {phrase: ("place", place) for place, phrase in PLACES.items()}
    | {phrase: ("relation", place) for place, phrase in RELATIONS.items()},
)
GRAMMAR = (
    "a SIZE COLOR SHAPE PLACE on a COLOR background, or a SIZE COLOR SHAPE RELATION a SIZE COLOR SHAPE on a "
    "COLOR background"
)


class _Reader:
    """Reads a prompt's words left to right; every refusal names the word, its position and what fits there."""

    def __init__(self, prompt):
        self.prompt, self.words, self.pos = prompt, words_of(prompt), 0
        if not self.words:
            raise PromptError(f"prompt {prompt!r} has no words; write {GRAMMAR}")

    def take(self, choice):
        """The value of whichever of ``choice``'s phrases comes next, and the 1-based position of its first word.

        A phrase that starts right but goes wrong is refused at its first wrong word, listing the phrases it
        could still have been."""
        start, got = self.pos, ()
        while got not in choice.options:
            word = self.words[self.pos] if self.pos < len(self.words) else None
            if word not in choice.follow[got]:
                self.fail(choice.what, choice.continuing(got))
            got += (word,)
            self.pos += 1
        return choice.options[got], start + 1

    def fail(self, what, allowed):
        fits = (
            f"{what} goes there"
            if [repr(a) for a in allowed] == [what]
            else f"{what} goes there: {', '.join(allowed)}"
        )
        if self.pos < len(self.words):
            word = self.words[self.pos]
            raise PromptError(f"prompt {self.prompt!r}: word {self.pos + 1} is {word!r}, but {fits}")
        last = self.words[-1]
        raise PromptError(f"prompt {self.prompt!r} ends after word {self.pos} {last!r}, but {fits}")

    def object(self):
        self.take(_A)
        size, _ = self.take(_SIZE)
        color, color_at = self.take(_COLOR)
        shape, shape_at = self.take(_SHAPE)
        return {"color": color, "shape": shape, "size": size}, color_at, shape_at

    def end(self):
        if self.pos < len(self.words):
            raise PromptError(
                f"prompt {self.prompt!r}: word {self.pos + 1} {self.words[self.pos]!r} comes after the end; "
                "nothing may follow 'background'"
            )


def parse(prompt):
    """A prompt -> its Scene, or a PromptError naming the first word that breaks the grammar (module docstring)."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt is a str, not a {type(prompt).__name__}")
    reader = _Reader(prompt)
    first, first_color_at, _ = reader.object()
    (kind, place), _ = reader.take(_WHERE)
    objects, color_at = [Object(place=place, **first)], [first_color_at]
    if kind == "relation":
        second, second_color_at, shape_at = reader.object()
        if (second["color"], second["shape"]) == (first["color"], first["shape"]):
            others = [s for s in SHAPES if s != first["shape"]]
            raise PromptError(
                f"prompt {prompt!r}: word {shape_at} {second['shape']!r} makes the second object a "
                f"{second['color']} {second['shape']} like the first; allowed there: another shape "
                f"({', '.join(others)}), or give it another colour"
            )
        objects.append(Object(place=OPPOSITE[place], **second))
        color_at.append(second_color_at)
    reader.take(_ON)
    reader.take(_A)
    background, background_at = reader.take(_COLOR)
    reader.take(_BACKGROUND)
    reader.end()
    for obj, at in zip(objects, color_at, strict=True):
        if obj.color == background:
            others = [c for c in COLORS if c != background]
            raise PromptError(
                f"prompt {prompt!r}: word {at} {obj.color!r} is the background's colour (word {background_at}), "
                f"so the object would not show; allowed there: {', '.join(others)}"
            )
    return Scene(background, tuple(objects))


def _objects_on(background):
    return [
        (size, color, shape) for size in SIZES for color in COLORS if color != background for shape in SHAPES
    ]


def all_scenes():
    """Every scene the grammar allows, once each, in a fixed order."""
    for background in COLORS:
        objects = _objects_on(background)
        for size, color, shape in objects:
            for place in PLACES:
                yield Scene(background, (Object(color, shape, size, place),))
        for size, color, shape in objects:
            for size2, color2, shape2 in objects:
                if (color2, shape2) == (color, shape):
                    continue
                for place in RELATIONS:
                    first = Object(color, shape, size, place)
                    yield Scene(background, (first, Object(color2, shape2, size2, OPPOSITE[place])))


def all_prompts():
    """Every prompt the grammar allows, canonical, once each (155 120)."""
    return (scene.prompt for scene in all_scenes())


def _pick(options, rng):
    options = list(options)
    return options[rng.integers(len(options))]


def random_scene(rng):
    """One or two objects with equal chance, then every choice uniform among what the grammar allows there.

    (Uniform over all 155 120 prompts instead would make 98 % of the scenes pairs.)"""
    background = _pick(COLORS, rng)
    first = _pick(_objects_on(background), rng)
    if rng.integers(2) == 0:
        size, color, shape = first
        return Scene(background, (Object(color, shape, size, _pick(PLACES, rng)),))
    second = _pick([o for o in _objects_on(background) if o[1:] != first[1:]], rng)
    place = _pick(RELATIONS, rng)
    (size, color, shape), (size2, color2, shape2) = first, second
    return Scene(
        background, (Object(color, shape, size, place), Object(color2, shape2, size2, OPPOSITE[place]))
    )


def _single_centre(place, extent, rng):
    """(x, y) in px of a lone object's centre; its box stays MARGIN clear of the border (see the docstring)."""
    middle = SIZE / 2
    if place == "centre":
        return middle + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, 2)
    along = rng.uniform(MARGIN + extent / 2, middle - SIDE_OFFSET)  # distance from the near border
    across = middle + rng.uniform(-ACROSS_JITTER, ACROSS_JITTER)
    along = {"left": along, "top": along, "right": SIZE - along, "bottom": SIZE - along}[place]
    return np.array([along, across] if place in ("left", "right") else [across, along])


def _pair_centres(place, extents, rng):
    """Centres (2, 2) of two objects, the first on side ``place`` of the second, both inside the image.

    Along the relation's axis the free room (what is left after the margins, the gap and the two extents;
    >= 2 px even for two big objects) is split at random before, between and after the objects."""
    first_leads = place in ("left", "top")
    lead, trail = extents if first_leads else extents[::-1]
    room = SIZE - 2 * MARGIN - GAP - lead - trail
    before, between, _ = room * rng.dirichlet(np.ones(3))
    lead_at = MARGIN + before + lead / 2
    along = np.array([lead_at, lead_at + lead / 2 + GAP + between + trail / 2])
    along = along if first_leads else along[::-1]
    across = SIZE / 2 + rng.uniform(-PAIR_ACROSS_JITTER, PAIR_ACROSS_JITTER, 2)
    horizontal = place in ("left", "right")
    return np.stack([along, across] if horizontal else [across, along], axis=1)


def coverage(shapes, centres, extents):
    """Anti-aliased masks (k, 64, 64) in 0..1 of k shapes: (k,) names, (k, 2) centres (x, y) px, (k,) extents px.

    Each pixel averages SUPERSAMPLE x SUPERSAMPLE samples, taken only in a WINDOW px square around the shape
    (it always holds the whole shape): a 64x64 image would cost five times the samples."""
    k, s = len(shapes), SUPERSAMPLE
    origin = np.clip(np.floor(centres).astype(int) - WINDOW // 2, 0, SIZE - WINDOW)  # (k, 2): x, y
    sub = (np.arange(WINDOW * s) + 0.5) / s  # sample positions inside the window, in px
    xs, ys = origin[:, 0, None] + sub, origin[:, 1, None] + sub  # (k, WINDOW * s)
    half = np.asarray(extents, dtype=np.float64)[:, None, None] / 2
    window = np.zeros((k, WINDOW, WINDOW), dtype=np.float32)
    for name in set(shapes):
        rows = np.array([i for i, shape in enumerate(shapes) if shape == name])
        u = (xs[rows, None, :] - centres[rows, 0, None, None]) / half[rows]
        v = (ys[rows, :, None] - centres[rows, 1, None, None]) / half[rows]
        window[rows] = _INSIDE[name](u, v).reshape(len(rows), WINDOW, s, WINDOW, s).mean(axis=(2, 4))
    masks = np.zeros((k, SIZE, SIZE), dtype=np.float32)
    steps = np.arange(WINDOW)
    masks[
        np.arange(k)[:, None, None],
        (origin[:, 1, None] + steps)[:, :, None],
        origin[:, 0, None, None] + steps,
    ] = window
    return masks


def _jittered(names, rng):
    rgb = np.array([COLORS[name] for name in names], dtype=np.float32)
    return rgb + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, rgb.shape)


def render(scenes, rng):
    """Draw scenes: ((n, 64, 64, 3) float32 RGB in 0-255, (n, 2, 64, 64) masks of the first and second object).

    A lone object's second mask is all zeros; the masks are what tests check placement and overlap on."""
    shapes, centres, extents, owner = [], [], [], []
    for row, scene in enumerate(scenes):
        sizes = [rng.uniform(*SIZES[o.size]) for o in scene.objects]
        if len(scene.objects) == 1:
            centres.append(_single_centre(scene.objects[0].place, sizes[0], rng)[None])
        else:
            centres.append(_pair_centres(scene.objects[0].place, sizes, rng))
        shapes += [o.shape for o in scene.objects]
        extents += sizes
        owner += [(row, slot) for slot in range(len(scene.objects))]
    masks = np.zeros((len(scenes), 2, SIZE, SIZE), dtype=np.float32)
    masks[tuple(np.array(owner).T)] = coverage(shapes, np.concatenate(centres), extents)
    fg = np.zeros((len(scenes), 2, 3), dtype=np.float32)
    fg[tuple(np.array(owner).T)] = _jittered([o.color for scene in scenes for o in scene.objects], rng)
    bg = _jittered([scene.background for scene in scenes], rng)
    alpha = masks[..., None]  # the objects never overlap, so their masks add up to at most 1
    rgb = bg[:, None, None, :] * (1 - alpha.sum(axis=1)) + (fg[:, :, None, None, :] * alpha).sum(axis=1)
    return rgb, masks


def make_batch(n, rng):
    """n random scenes (``random_scene``) and their prompts: ((n, 3, 64, 64) float32 in [-1, 1], list of n str)."""
    scenes = [random_scene(rng) for _ in range(n)]
    rgb, _ = render(scenes, rng)
    images = np.clip(rgb, 0, 255).transpose(0, 3, 1, 2) / 127.5 - 1.0
    return images.astype(np.float32), [scene.prompt for scene in scenes]


def draw(prompt, rng):
    """The scene a prompt describes, as a (64, 64, 3) uint8 picture (PromptError if the grammar refuses it)."""
    rgb, _ = render([parse(prompt)], rng)
    return np.clip(np.rint(rgb[0]), 0, 255).astype(np.uint8)
