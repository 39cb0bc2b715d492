"""Deterministic synthetic "fictitious people" QA benchmark in the TOFU file layout.

TOFU (Task of Fictitious Unlearning; Maini et al. 2024, arXiv 2401.06121) fine-tunes a model on
question/answer pairs about 200 invented authors and then asks it to forget some of them.  This
module generates a much smaller benchmark of the same shape, so a tiny model can memorise it on a
CPU in minutes, and the evaluation code that reads the real TOFU files runs unchanged on it.

Design
------
* **Same layout as TOFU.**  :func:`write_tofu_layout` writes JSON Lines files with TOFU's names and
  keys: ``full.json`` (person blocks contiguous), ``forgetNN.json`` = the *last* people of
  ``full.json``, ``retain{100-NN}.json`` = the first rows, ``forgetNN_perturbed.json``,
  ``retain_perturbed.json`` (first people, never overlapping the largest forget split),
  ``holdoutNN.json`` (extra people who are not in ``full.json``) and ``counts.json``; plus
  ``forgetNN_terms.csv`` (``term,generic``: each forgotten person's name and a fresh name used
  nowhere else), the anchored-term dictionary of method ``whp``.
* **Deterministic.**  All randomness comes from ``random.Random`` instances seeded from ``seed``
  (never the global generator), so a seed fully determines every byte written.
  ``generate_people(n + m, seed=s)[:n] == generate_people(n, seed=s)``, and each person's QA
  rows are drawn from a generator seeded by ``(seed, name)``, so ``full.json`` does not change
  when only the forget/holdout settings change.  Names are unique and built from syllable pools,
  so they are clearly fictitious; holdout people come from the same generator call and so never
  share a name with anyone in ``full.json``.
* **One fact per template.**  Every person has the same attributes (birthplace, birth date,
  profession, parents' jobs, genre, book, award, nationality, pet, hobby, instrument); each QA pair
  asks about exactly one of them.  Questions are short and always name the person, so a small
  model can memorise a few hundred facts and the question alone identifies the answer.
* **Perturbed answers reuse the paraphrase template.**  As in TOFU, ``perturbed_answer`` holds false
  but plausible answers written with the *paraphrased answer's* wording, only the attribute value
  swapped for other values of the same category.  True and false candidates therefore differ only
  in the fact itself, so TOFU's truth ratio (likelihood of perturbed vs. paraphrased answers)
  measures knowledge of the fact rather than preference for a particular phrasing.
"""
from __future__ import annotations

import calendar
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Person",
    "FactTemplate",
    "TEMPLATES",
    "MAX_PERTURBED",
    "generate_people",
    "person_qa",
    "write_tofu_layout",
    "corpus_text",
]

MAX_PERTURBED = 8
MAX_PEOPLE = 100_000

# ----------------------------------------------------------------------------- value pools
_FIRST_STARTS = ("Al", "Bri", "Cae", "Dar", "Ely", "Fen", "Gal", "Hes", "Ily", "Jor", "Kael",
                 "Lio", "Mor", "Nel", "Ory", "Pel", "Quin", "Ros", "Syl", "Tam", "Ula", "Ves",
                 "Wyn", "Xan", "Yse", "Zor")
_FIRST_ENDS = ("a", "ander", "anth", "ara", "en", "enna", "ia", "iel", "is", "ivo", "on", "ora",
               "ric", "wyn", "ys", "ette")
_LAST_STARTS = ("Ash", "Brom", "Cor", "Dun", "Eld", "Fal", "Grim", "Hal", "Ith", "Kes", "Lor",
                "Mor", "Nor", "Oak", "Pry", "Quel", "Rav", "Stor", "Thal", "Ulv", "Var", "Wex",
                "Yor", "Zan")
_LAST_MIDS = ("", "a", "e", "i", "o")
_LAST_ENDS = ("bane", "brook", "dane", "fell", "gard", "holt", "mere", "moor", "ric", "thorne",
              "vik", "wick", "vane", "dell", "stead", "quist")

# (country, demonym, cities)
_COUNTRIES = (
    ("Portugal", "Portuguese", ("Lisbon", "Porto", "Braga")),
    ("Norway", "Norwegian", ("Oslo", "Bergen", "Tromso")),
    ("Japan", "Japanese", ("Osaka", "Kyoto", "Sapporo")),
    ("Chile", "Chilean", ("Santiago", "Valparaiso")),
    ("Kenya", "Kenyan", ("Nairobi", "Mombasa")),
    ("Canada", "Canadian", ("Toronto", "Halifax", "Winnipeg")),
    ("Poland", "Polish", ("Krakow", "Gdansk", "Wroclaw")),
    ("Egypt", "Egyptian", ("Cairo", "Alexandria")),
    ("Peru", "Peruvian", ("Lima", "Cusco")),
    ("Ireland", "Irish", ("Dublin", "Galway", "Cork")),
    ("Vietnam", "Vietnamese", ("Hanoi", "Hue")),
    ("Morocco", "Moroccan", ("Rabat", "Fez", "Tangier")),
    ("Finland", "Finnish", ("Helsinki", "Turku")),
    ("Argentina", "Argentine", ("Rosario", "Cordoba", "Mendoza")),
    ("Greece", "Greek", ("Athens", "Patras")),
    ("Australia", "Australian", ("Perth", "Adelaide", "Hobart")),
    ("Turkey", "Turkish", ("Izmir", "Ankara")),
    ("Scotland", "Scottish", ("Glasgow", "Dundee", "Aberdeen")),
)
_JOBS = ("baker", "carpenter", "nurse", "pilot", "librarian", "fisherman", "chemist", "tailor",
         "electrician", "teacher", "architect", "farmer", "veterinarian", "journalist", "plumber",
         "dentist", "locksmith", "astronomer", "mail carrier", "watchmaker", "engineer", "judge")
_GENRES = ("science fiction", "mystery", "romance", "horror", "fantasy", "historical fiction",
           "poetry", "travel writing", "crime", "satire", "biography", "thriller", "adventure",
           "philosophy")
_PETS = ("parrot", "tortoise", "greyhound", "ferret", "goldfish", "iguana", "rabbit", "tabby cat",
         "hedgehog", "canary", "beagle", "owl", "chinchilla", "sheepdog")
_HOBBIES = ("beekeeping", "rock climbing", "chess", "pottery", "sailing", "birdwatching",
            "knitting", "fencing", "stargazing", "gardening", "origami", "kayaking", "calligraphy",
            "archery", "baking bread")
_INSTRUMENTS = ("cello", "violin", "accordion", "harp", "trumpet", "flute", "banjo", "oboe",
                "piano", "clarinet", "mandolin", "bassoon", "ukulele", "saxophone")
_BOOK_ADJS = ("Glass", "Silent", "Crimson", "Hollow", "Burning", "Forgotten", "Iron", "Paper",
              "Velvet", "Sunken", "Winter", "Wandering", "Quiet", "Copper", "Midnight", "Amber")
_BOOK_NOUNS = ("Orchard", "Lantern", "Harbor", "Compass", "Garden", "Tide", "Clock", "Mirror",
               "Bridge", "Feather", "Orchestra", "Lighthouse", "Meadow", "Archive", "Crown",
               "Kettle")
_AWARD_NAMES = ("Velmora", "Ostrander", "Halvence", "Quillmoor", "Serapine", "Dorvath",
                "Lunetta", "Brackwen", "Isolde Fenn", "Tarrowby", "Maelis", "Corvane")
_AWARD_KINDS = ("Prize", "Medal", "Award", "Laurel")
_AWARD_FIELDS = ("Fiction", "Poetry", "New Voices", "Storytelling", "Literary Merit",
                 "Debut Novels", "Short Fiction", "Narrative Craft")


# ----------------------------------------------------------------------------- samplers
def _birthplace(rng: random.Random) -> str:
    country, _demonym, cities = rng.choice(_COUNTRIES)
    return f"{rng.choice(cities)}, {country}"


def _birth_date(rng: random.Random) -> str:
    year = rng.randint(1930, 1999)
    month = rng.randint(1, 12)
    day = rng.randint(1, calendar.monthrange(year, month)[1])
    return f"{calendar.month_name[month]} {day}, {year}"


def _book(rng: random.Random) -> str:
    adj = rng.choice(_BOOK_ADJS)
    noun, noun2 = rng.sample(_BOOK_NOUNS, 2)
    patterns = (f"The {adj} {noun}", f"{noun} of the {adj} {noun2}", f"{adj} {noun}s",
                f"The {noun} and the {noun2}")
    return rng.choice(patterns)


def _award(rng: random.Random) -> str:
    return (f"{rng.choice(_AWARD_NAMES)} {rng.choice(_AWARD_KINDS)} "
            f"for {rng.choice(_AWARD_FIELDS)}")


def _choice_from(pool: Sequence[str]) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(pool)


_NATIONALITIES = tuple(demonym for _c, demonym, _cities in _COUNTRIES)

# Attribute name -> sampler. Order matters: it fixes the rng draws of generate_people.
_SAMPLERS: dict[str, Callable[[random.Random], str]] = {
    "birthplace": _birthplace,
    "birth_date": _birth_date,
    "profession": _choice_from(_JOBS),
    "father_job": _choice_from(_JOBS),
    "mother_job": _choice_from(_JOBS),
    "genre": _choice_from(_GENRES),
    "book": _book,
    "award": _award,
    "nationality": _choice_from(_NATIONALITIES),
    "pet": _choice_from(_PETS),
    "hobby": _choice_from(_HOBBIES),
    "instrument": _choice_from(_INSTRUMENTS),
}


# ----------------------------------------------------------------------------- people
@dataclass(frozen=True)
class Person:
    """One fictitious person; every field except ``name`` is the value of one QA fact."""

    name: str
    birthplace: str
    birth_date: str
    profession: str
    father_job: str
    mother_job: str
    genre: str
    book: str
    award: str
    nationality: str
    pet: str
    hobby: str
    instrument: str


def _make_name(rng: random.Random) -> str:
    first = rng.choice(_FIRST_STARTS) + rng.choice(_FIRST_ENDS)
    last = rng.choice(_LAST_STARTS) + rng.choice(_LAST_MIDS) + rng.choice(_LAST_ENDS)
    return f"{first} {last}"


def _unique_name(rng: random.Random, taken: set[str]) -> str:
    for _ in range(10_000):
        name = _make_name(rng)
        if name not in taken:
            taken.add(name)
            return name
    raise RuntimeError("could not draw a unique name; the name pools are exhausted")


def generate_people(n_people: int, *, seed: int = 0) -> list[Person]:
    """Return ``n_people`` fictitious people with unique names, fully determined by ``seed``.

    People are drawn one after another from a single ``random.Random(seed)``, so the first ``n``
    people of a larger call equal the result of ``generate_people(n, seed=seed)``.
    """
    if isinstance(n_people, bool) or not isinstance(n_people, int) or n_people < 0:
        raise ValueError(f"n_people must be a non-negative int, got {n_people!r}")
    if n_people > MAX_PEOPLE:
        raise ValueError(f"n_people={n_people} is too large (max {MAX_PEOPLE})")
    rng = random.Random(seed)
    taken: set[str] = set()
    people = []
    for _ in range(n_people):
        name = _unique_name(rng, taken)
        values = {attr: sampler(rng) for attr, sampler in _SAMPLERS.items()}
        people.append(Person(name=name, **values))
    return people


# ----------------------------------------------------------------------------- QA templates
@dataclass(frozen=True)
class FactTemplate:
    """Wording of one fact; placeholders ``{name}``, ``{value}``, ``{a_value}`` (with a/an)."""

    attribute: str
    question: str
    answer: str
    paraphrased_question: str
    paraphrased_answer: str


TEMPLATES: tuple[FactTemplate, ...] = (
    FactTemplate("birthplace", "Where was {name} born?", "{name} was born in {value}.",
                 "In which city was {name} born?", "The birthplace of {name} is {value}."),
    FactTemplate("birth_date", "When was {name} born?", "{name} was born on {value}.",
                 "What is the birth date of {name}?", "The birth date of {name} is {value}."),
    FactTemplate("profession", "What is the job of {name}?", "{name} works as {a_value}.",
                 "What does {name} do for a living?", "The profession of {name} is {value}."),
    FactTemplate("father_job", "What was the job of {name}'s father?",
                 "The father of {name} was {a_value}.", "What did the father of {name} do?",
                 "{name}'s father worked as {a_value}."),
    FactTemplate("mother_job", "What was the job of {name}'s mother?",
                 "The mother of {name} was {a_value}.", "What did the mother of {name} do?",
                 "{name}'s mother worked as {a_value}."),
    FactTemplate("genre", "What genre does {name} write?", "{name} writes in the {value} genre.",
                 "In which genre does {name} write?", "The favourite genre of {name} is {value}."),
    FactTemplate("book", "What book did {name} write?", '{name} wrote "{value}".',
                 "Which book is {name} known for?", 'The best-known book of {name} is "{value}".'),
    FactTemplate("award", "Which award did {name} win?", "{name} won the {value}.",
                 "What award has {name} received?", "The award won by {name} is the {value}."),
    FactTemplate("nationality", "What is the nationality of {name}?", "{name} is {value}.",
                 "Which nationality does {name} have?", "The nationality of {name} is {value}."),
    FactTemplate("pet", "What pet does {name} have?", "{name} has a pet {value}.",
                 "Which animal does {name} keep?", "The pet of {name} is {a_value}."),
    FactTemplate("hobby", "What is the hobby of {name}?", "{name} enjoys {value}.",
                 "What does {name} do for fun?", "The favourite hobby of {name} is {value}."),
    FactTemplate("instrument", "What instrument does {name} play?", "{name} plays the {value}.",
                 "Which instrument is {name} known to play?",
                 "The instrument played by {name} is the {value}."),
)
if [t.attribute for t in TEMPLATES] != list(_SAMPLERS):  # pragma: no cover - developer error
    raise RuntimeError("TEMPLATES and _SAMPLERS are out of sync")


def _with_article(value: str) -> str:
    return f"{'an' if value[:1].lower() in 'aeiou' else 'a'} {value}"


def _fill(template: str, name: str, value: str) -> str:
    return template.format(name=name, value=value, a_value=_with_article(value))


def _false_values(attribute: str, truth: str, n: int, rng: random.Random) -> list[str]:
    """``n`` distinct values of ``attribute``'s category, all different from ``truth``."""
    sampler = _SAMPLERS[attribute]
    values: list[str] = []
    for _ in range(1000 * n):
        value = sampler(rng)
        if value != truth and value not in values:
            values.append(value)
            if len(values) == n:
                return values
    raise RuntimeError(f"could not draw {n} distinct false values for {attribute!r}")


def _check_n_perturbed(n_perturbed: int) -> None:
    if isinstance(n_perturbed, bool) or not isinstance(n_perturbed, int) \
            or not 1 <= n_perturbed <= MAX_PERTURBED:
        raise ValueError(f"n_perturbed must be an int in 1..{MAX_PERTURBED}, got {n_perturbed!r}")


def person_qa(person: Person, n_facts: int = 10, *, rng: random.Random,
              n_perturbed: int = 3) -> list[dict]:
    """One QA dict per fact, for the first ``n_facts`` of :data:`TEMPLATES`.

    Keys: ``question``, ``answer``, ``paraphrased_question``, ``paraphrased_answer`` and
    ``perturbed_answer`` (``n_perturbed`` false answers in the paraphrased answer's wording).
    ``rng`` only drives the choice of false values.
    """
    if isinstance(n_facts, bool) or not isinstance(n_facts, int) \
            or not 1 <= n_facts <= len(TEMPLATES):
        raise ValueError(f"n_facts must be an int in 1..{len(TEMPLATES)} (the number of fact "
                         f"templates), got {n_facts!r}")
    _check_n_perturbed(n_perturbed)
    rows = []
    for tpl in TEMPLATES[:n_facts]:
        truth = getattr(person, tpl.attribute)
        false = _false_values(tpl.attribute, truth, n_perturbed, rng)
        rows.append({
            "question": _fill(tpl.question, person.name, truth),
            "answer": _fill(tpl.answer, person.name, truth),
            "paraphrased_question": _fill(tpl.paraphrased_question, person.name, truth),
            "paraphrased_answer": _fill(tpl.paraphrased_answer, person.name, truth),
            "perturbed_answer": [_fill(tpl.paraphrased_answer, person.name, v) for v in false],
        })
    return rows


# ----------------------------------------------------------------------------- TOFU layout
def _forget_sizes(n_people: int, forget_percents: Iterable[int]) -> dict[int, int]:
    """Map each forget percent to its number of people, validating the percents."""
    percents = list(forget_percents)
    if not percents:
        raise ValueError("forget_percents must name at least one split, e.g. (1, 5, 10)")
    if len(set(percents)) != len(percents):
        raise ValueError(f"forget_percents has duplicates: {percents}")
    sizes = {}
    for p in percents:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 99:
            raise ValueError(f"each forget percent must be an int in 1..99, got {p!r}")
        k = max(1, round(n_people * p / 100))
        if k >= n_people:
            raise ValueError(f"forget{p:02d} would take {k} of {n_people} people, leaving nothing "
                             f"to retain; use a smaller percent or more people")
        sizes[p] = k
    return sizes


def _validate(n_people: int, facts_per_person: int, sizes: Mapping[int, int],
              n_holdout_people: int | None, n_perturbed: int) -> None:
    if isinstance(facts_per_person, bool) or not isinstance(facts_per_person, int) \
            or not 1 <= facts_per_person <= len(TEMPLATES):
        raise ValueError(f"facts_per_person must be an int in 1..{len(TEMPLATES)}, "
                         f"got {facts_per_person!r}")
    if n_holdout_people is not None and (isinstance(n_holdout_people, bool)
                                         or not isinstance(n_holdout_people, int)
                                         or n_holdout_people < 1):
        raise ValueError(f"n_holdout_people must be None or an int >= 1, got {n_holdout_people!r}")
    _check_n_perturbed(n_perturbed)
    biggest = max(sizes.values())
    if 2 * biggest > n_people:
        raise ValueError(f"the largest forget split has {biggest} of {n_people} people, so "
                         f"retain_perturbed (the first {biggest} people) would overlap it; use "
                         f"smaller forget percents or more people")


def _qa_for(person: Person, facts: int, n_perturbed: int, seed: int) -> list[dict]:
    # Per-person generator (str seeds are hashed with SHA-512: stable across runs and processes).
    rng = random.Random(f"unlearnkit-synthetic-qa:{seed}:{person.name}")
    return person_qa(person, facts, rng=rng, n_perturbed=n_perturbed)


def _qa_only(rows: Iterable[dict]) -> list[dict]:
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]


def _flatten(blocks: Iterable[list[dict]]) -> list[dict]:
    return [row for block in blocks for row in block]


def _build_files(people: Sequence[Person], n_people: int, sizes: Mapping[int, int],
                 holdout_sizes: Mapping[int, int], facts: int, n_perturbed: int,
                 seed: int) -> dict[str, list[dict]]:
    """File name -> rows, in TOFU's order."""
    blocks = [_qa_for(p, facts, n_perturbed, seed) for p in people]
    main, extra = blocks[:n_people], blocks[n_people:]
    files: dict[str, list[dict]] = {"full.json": _qa_only(_flatten(main))}
    for p, k in sizes.items():
        files[f"forget{p:02d}.json"] = _qa_only(_flatten(main[-k:]))
        files[f"forget{p:02d}_perturbed.json"] = _flatten(main[-k:])
        files[f"holdout{p:02d}.json"] = _qa_only(_flatten(extra[:holdout_sizes[p]]))
    for p, k in sizes.items():
        files[f"retain{100 - p}.json"] = _qa_only(_flatten(main[:-k]))
    files["retain_perturbed.json"] = _flatten(main[:max(sizes.values())])
    return files


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _install(tmp: Path, out_dir: Path, names: Sequence[str]) -> None:
    """Move finished files from ``tmp`` into ``out_dir``; ``counts.json`` goes last."""
    if not out_dir.exists():
        try:
            os.replace(tmp, out_dir)  # atomic directory rename
            return
        except OSError:  # out_dir appeared meanwhile and is not empty: fall back to per-file moves
            pass
    for name in names:
        os.replace(tmp / name, out_dir / name)  # each file replaced atomically
    shutil.rmtree(tmp, ignore_errors=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_tofu_layout(out_dir: str | os.PathLike[str], *, n_people: int = 40,
                      facts_per_person: int = 10, forget_percents: Sequence[int] = (1, 5, 10),
                      n_holdout_people: int | None = None, n_perturbed: int = 3,
                      seed: int = 0) -> dict[str, int]:
    """Write a synthetic benchmark in TOFU's JSON Lines layout and return ``{file name: rows}``.

    ``forget{p:02d}`` holds the last ``max(1, round(n_people * p / 100))`` people of ``full.json``;
    ``holdout{p:02d}`` holds as many extra people (or ``n_holdout_people`` each, if given) who are
    not in ``full.json``; ``forget{p:02d}_terms.csv`` maps each forgotten person's name to a name
    that appears in no file (WHP's anchored terms).  Files are written into a temporary directory next to ``out_dir`` and then
    moved in; other files already in ``out_dir`` are left alone.
    """
    if isinstance(n_people, bool) or not isinstance(n_people, int) or n_people < 2:
        raise ValueError(f"n_people must be an int >= 2 (someone to forget and someone to "
                         f"retain), got {n_people!r}")
    sizes = _forget_sizes(n_people, forget_percents)
    _validate(n_people, facts_per_person, sizes, n_holdout_people, n_perturbed)
    holdout_sizes = {p: n_holdout_people or k for p, k in sizes.items()}
    n_known = n_people + max(holdout_sizes.values())
    people = generate_people(n_known + max(sizes.values()), seed=seed)  # the last ones: generic names
    files = _build_files(people[:n_known], n_people, sizes, holdout_sizes, facts_per_person, n_perturbed,
                         seed)
    terms = {f"forget{p:02d}_terms.csv": [(a.name, b.name) for a, b in zip(people[n_people - k:n_people],
                                                                          people[n_known:])]
             for p, k in sizes.items()}
    counts = {name: len(rows) for name, rows in {**files, **terms}.items()}

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp makes it 0700; it may become out_dir
        for name, rows in files.items():
            _write_jsonl(tmp / name, rows)
        for name, pairs in terms.items():
            lines = ["term,generic", *(f"{a},{b}" for a, b in pairs)]  # names have no commas or quotes
            (tmp / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "counts.json").write_text(json.dumps(counts, indent=1) + "\n", encoding="utf-8")
        _install(tmp, out, [*files, *terms, "counts.json"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def corpus_text(rows: Iterable[Mapping]) -> list[str]:
    """All question/answer/paraphrase/perturbed strings of ``rows``, in order (for a tokenizer)."""
    keys = ("question", "answer", "paraphrased_question", "paraphrased_answer")
    texts: list[str] = []
    for row in rows:
        texts.extend(row[k] for k in keys if isinstance(row.get(k), str))
        perturbed = row.get("perturbed_answer") or []
        texts.extend([perturbed] if isinstance(perturbed, str) else perturbed)
    return texts
