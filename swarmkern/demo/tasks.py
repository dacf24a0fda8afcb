"""Procedurally generated multiple-choice skills for the demo (fixed seeds, no downloads).

Every skill is a generator `(rng, split) -> Example`: a short question, 2-4 answer choices and the index
of the right one. Each skill has several *training* phrasings and one *held-out* phrasing. Experts are
fine-tuned on different mixtures of the training phrasings of all skills; the target task is a quiz made
only of held-out phrasings of some skills (TARGET_MIX), in a mix no expert was trained on. The swarm must
find a combination of experts that transfers, looking only at the target's dev split.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

LETTERS = "ABCD"


TRAIN, HELDOUT = "train", "heldout"


@dataclass(frozen=True)
class Example:
    """One multiple-choice question. `answer` indexes `choices`."""
    question: str
    choices: tuple[str, ...]
    answer: int
    skill: str


Generator = Callable[[random.Random, str], Example]

# ---------------------------------------------------------------------------------------------
# word lists (kept small and common, so a 135M model has seen the words)
_ANTONYMS = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"),
             ("open", "closed"), ("light", "dark"), ("early", "late"), ("rich", "poor"), ("hard", "soft"),
             ("young", "old"), ("wet", "dry"), ("full", "empty"), ("strong", "weak"), ("loud", "quiet"),
             ("long", "short"), ("high", "low"), ("good", "bad"), ("clean", "dirty"), ("thick", "thin"),
             ("heavy", "light"), ("near", "far"), ("inside", "outside"), ("true", "false"), ("win", "lose"),
             ("buy", "sell"), ("push", "pull"), ("day", "night"), ("left", "right"), ("first", "last")]
_CATEGORIES = {
    "animal": ["dog", "cat", "horse", "cow", "lion", "tiger", "rabbit", "sheep", "mouse", "bear", "wolf",
               "duck", "goat", "monkey", "zebra", "fox"],
    "fruit": ["apple", "banana", "orange", "grape", "lemon", "cherry", "peach", "pear", "mango", "plum",
              "melon", "kiwi", "lime", "apricot"],
    "color": ["red", "blue", "green", "yellow", "purple", "black", "white", "pink", "brown", "gray"],
    "vehicle": ["car", "bus", "truck", "train", "bicycle", "boat", "plane", "ship", "taxi", "tractor"],
    "tool": ["hammer", "saw", "drill", "wrench", "shovel", "axe", "rake", "chisel", "ladder", "knife"],
    "body part": ["hand", "foot", "nose", "ear", "eye", "knee", "elbow", "finger", "mouth", "shoulder"],
}
_CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
             ("England", "London"), ("Greece", "Athens"), ("Canada", "Ottawa"), ("Portugal", "Lisbon"),
             ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
             ("Poland", "Warsaw"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"),
             ("Thailand", "Bangkok"), ("India", "Delhi"), ("Mexico", "Mexico City"), ("Turkey", "Ankara")]
_POSITIVE = ["love", "great", "wonderful", "excellent", "happy", "enjoyed", "beautiful", "amazing",
             "perfect", "delightful", "fantastic", "pleasant"]
_NEGATIVE = ["hate", "terrible", "awful", "horrible", "sad", "boring", "ugly", "disappointing",
             "broken", "rude", "dirty", "painful"]
_THINGS = ["movie", "meal", "hotel", "book", "trip", "song", "game", "class", "party", "show"]
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                 "eleven", "twelve"]
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _mc(rng: random.Random, skill: str, question: str, right: str, wrong: list[str], k: int) -> Example:
    """Shuffle the right answer among k-1 distinct distractors."""
    pool = [w for w in dict.fromkeys(wrong) if w != right]
    choices = [right] + rng.sample(pool, k - 1)
    rng.shuffle(choices)
    return Example(question, tuple(choices), choices.index(right), skill)


def _digits(rng: random.Random, right: int) -> list[str]:
    return [str(v) for v in range(10) if v != right]


def _two_digit_pair(rng: random.Random) -> tuple[int, int]:
    """Two 2-digit numbers with different tens digits (so their first tokens differ)."""
    ta, tb = rng.sample(range(1, 10), 2)
    return 10 * ta + rng.randint(0, 9), 10 * tb + rng.randint(0, 9)


# ---------------------------------------------------------------------------------------------
# skills: each picks one of its training phrasings, or its held-out phrasing
def _phrase(rng: random.Random, split: str, train: list[str], heldout: str, **fields) -> str:
    if split not in (TRAIN, HELDOUT):
        raise ValueError(f"split must be {TRAIN!r} or {HELDOUT!r}, got {split!r}")
    return (rng.choice(train) if split == TRAIN else heldout).format(**fields)


_OBJECTS = ["apples", "books", "coins", "pens", "cards", "stamps", "shells", "cookies", "marbles", "eggs"]


def add(rng, split):
    a = rng.randint(0, 9)
    b = rng.randint(0, 9 - a)
    obj = rng.choice(_OBJECTS)
    q = _phrase(rng, split, ["What is {a} plus {b}?", "Add {a} and {b}.", "What is the sum of {a} and {b}?"],
                "Tom has {a} {obj} and finds {b} more. How many {obj} does Tom have now?", a=a, b=b, obj=obj)
    return _mc(rng, "add", q, str(a + b), _digits(rng, a + b), 4)


def subtract(rng, split):
    a = rng.randint(1, 9)
    b = rng.randint(0, a)
    obj = rng.choice(_OBJECTS)
    q = _phrase(rng, split, ["What is {a} minus {b}?", "Subtract {b} from {a}."],
                "Ann had {a} {obj} and gave away {b}. How many {obj} are left?", a=a, b=b, obj=obj)
    return _mc(rng, "subtract", q, str(a - b), _digits(rng, a - b), 4)


def larger(rng, split):
    a, b = _two_digit_pair(rng)
    q = _phrase(rng, split, ["Which number is larger: {a} or {b}?", "Which is greater, {a} or {b}?",
                             "Pick the bigger number: {a}, {b}."],
                "One box holds {a} {obj}, another holds {b}. How many are in the fuller box?",
                a=a, b=b, obj=rng.choice(_OBJECTS))
    return _mc(rng, "larger", q, str(max(a, b)), [str(min(a, b))], 2)


def next_letter(rng, split):
    i = rng.randint(0, 24)
    wrong = [_ALPHABET[j] for j in range(max(0, i - 3), min(26, i + 5)) if j != i + 1]
    q = _phrase(rng, split, ["Which letter comes right after {x}?", "What is the next letter after {x}?"],
                "In the alphabet, {x} is followed by which letter?", x=_ALPHABET[i])
    return _mc(rng, "next_letter", q, _ALPHABET[i + 1], wrong, 4)


def antonym(rng, split):
    a, b = rng.choice(_ANTONYMS)
    if rng.random() < 0.5:
        a, b = b, a
    wrong = [w for pair in _ANTONYMS for w in pair if w not in (a, b)]
    q = _phrase(rng, split, ["What is the opposite of '{a}'?", "Give an antonym of '{a}'."],
                "Which word means the reverse of '{a}'?", a=a)
    return _mc(rng, "antonym", q, b, wrong, 4)


def category(rng, split):
    cat = rng.choice(sorted(_CATEGORIES))
    word = rng.choice(_CATEGORIES[cat])
    q = _phrase(rng, split, ["What kind of thing is a {w}?", "A {w} is an example of what?"],
                "Sort the word '{w}' into a group. Which group?", w=word)
    return _mc(rng, "category", q, cat, [c for c in _CATEGORIES if c != cat], 4)


def capital(rng, split):
    country, city = rng.choice(_CAPITALS)
    q = _phrase(rng, split, ["What is the capital of {c}?", "Which city is the capital of {c}?"],
                "The government of {c} sits in which city?", c=country)
    return _mc(rng, "capital", q, city, [c for _, c in _CAPITALS], 4)


def sentiment(rng, split):
    positive = rng.random() < 0.5
    word = rng.choice(_POSITIVE if positive else _NEGATIVE)
    thing = rng.choice(_THINGS)
    text = f"I {word} this {thing}." if word in ("love", "hate", "enjoyed") else f"The {thing} was {word}."
    q = _phrase(rng, split, ['Is this review positive or negative? "{t}"', 'Review: "{t}" Positive or negative?'],
                'My friend texted me: "{t}" Was that positive or negative?', t=text)
    return _mc(rng, "sentiment", q, "positive" if positive else "negative",
               ["negative" if positive else "positive"], 2)


def count_words(rng, split):
    n = rng.randint(1, 9)
    words = rng.sample([w for ws in _CATEGORIES.values() for w in ws], n)
    q = _phrase(rng, split, ["How many words are in the list: {w}?", "Count the words: {w}."],
                "A shopping bag contains: {w}. How many things are in the bag?", w=", ".join(words))
    return _mc(rng, "count_words", q, str(n), _digits(rng, n), 4)


def number_word(rng, split):
    n = rng.randint(0, 9)
    q = _phrase(rng, split, ["Which digit is the number '{w}'?", "Write '{w}' as a digit."],
                "The word '{w}' stands for which digit?", w=_NUMBER_WORDS[n])
    return _mc(rng, "number_word", q, str(n), _digits(rng, n), 4)


def first_letter(rng, split):
    word = rng.choice([w for ws in _CATEGORIES.values() for w in ws])
    q = _phrase(rng, split, ["What is the first letter of the word '{w}'?", "The word '{w}' starts with which letter?"],
                "Which letter does '{w}' begin with?", w=word)
    return _mc(rng, "first_letter", q, word[0].upper(), list(_ALPHABET), 4)


SKILLS: dict[str, Generator] = {f.__name__: f for f in (
    add, subtract, larger, next_letter, antonym, category, capital, sentiment, count_words, number_word,
    first_letter)}
# the target quiz: held-out phrasings of these skills, in equal parts
TARGET_SKILLS: tuple[str, ...] = ("add", "larger", "sentiment", "count_words")


def sample(skills: dict[str, float], n: int, seed: int, split: str = TRAIN, exclude: set[str] | None = None,
           distinct: bool = True) -> list[Example]:
    """n questions from a mixture {skill: weight} (weights need not sum to 1), reproducible from `seed`.

    With `distinct`, no question repeats and none is in `exclude` (keeps a test split disjoint from dev);
    a skill whose distinct questions run out leaves the mixture. Training sets may repeat questions."""
    unknown = sorted(set(skills) - set(SKILLS))
    if unknown:
        raise ValueError(f"unknown skills {unknown}; known: {sorted(SKILLS)}")
    rng = random.Random(seed)
    live = {s: w for s, w in sorted(skills.items()) if w > 0}
    misses = dict.fromkeys(live, 0)
    out: list[Example] = []
    seen = set(exclude or ())
    while len(out) < n:
        if not live:
            raise ValueError(f"cannot draw {n} distinct questions from skills {sorted(skills)} (only {len(out)} exist)")
        name = rng.choices(list(live), list(live.values()))[0]
        ex = SKILLS[name](rng, split)
        if not distinct:
            out.append(ex)
        elif ex.question not in seen:
            seen.add(ex.question)
            out.append(ex)
            misses[name] = 0
        else:
            misses[name] += 1
            if misses[name] > 500:
                del live[name]
    return out


def target_splits(n_dev: int, n_test: int, seed: int, skills: tuple[str, ...] = TARGET_SKILLS,
                  n_holdout: int = 0) -> tuple[list[Example], list[Example], list[Example]]:
    """The target quiz: held-out phrasings of `skills` in equal parts, as disjoint (dev, test, holdout)
    lists of distinct questions. `holdout` is a second development set for choosing the demo's own
    settings, so the test split is never looked at before the final report."""
    sizes = (n_dev, n_test, n_holdout)
    parts: list[list[Example]] = [[], [], []]
    for i, skill in enumerate(skills):
        share = [n // len(skills) + (1 if i < n % len(skills) else 0) for n in sizes]
        drawn = sample({skill: 1.0}, sum(share), seed=seed * 1000 + i, split=HELDOUT)
        for j, k in enumerate(share):
            start = sum(share[:j])
            parts[j].extend(drawn[start:start + k])
    for j, part in enumerate(parts):
        random.Random(seed + j).shuffle(part)
    return parts[0], parts[1], parts[2]
