"""A deterministic multilingual workload: texts of long-tailed lengths (5 to 200 words), and a
fixed set of mixed scripts and lengths that the parity tests and the device check compare on."""

from __future__ import annotations

import random
from collections.abc import Callable

PARAGRAPH = ("Retrieval augmented generation combines search with language models. "
             "Поиск по документам объединяет плотные и разреженные векторы. "
             "检索增强生成结合了搜索与语言模型。 البحث الهجين يجمع بين المتجهات الكثيفة والمتفرقة. ")
MIXED_TEXTS = [
    "hello",
    "What is BGE-M3?",
    "Привет, как дела? Это тест многоязычной модели.",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "مرحبا بالعالم، هذا اختبار للنموذج",
    "emoji 🚀🔥 and numbers 12345 and CamelCaseWords",
    "Ein längerer deutscher Satz über Einbettungen, Vektoren und die Suche in großen Dokumentensammlungen.",
    PARAGRAPH * 3,
    PARAGRAPH * 40,  # well past 512 tokens
]

_WORDS = {
    "en": [
        "search",
        "engine",
        "retrieval",
        "dense",
        "sparse",
        "vector",
        "model",
        "query",
        "document",
        "ranking",
        "relevance",
        "index",
        "language",
        "people",
        "city",
        "river",
        "history",
        "science",
        "music",
        "market",
        "energy",
        "water",
        "garden",
        "future",
    ],
    "ru": [
        "поиск",
        "документ",
        "модель",
        "вектор",
        "запрос",
        "город",
        "река",
        "история",
        "наука",
        "музыка",
        "рынок",
        "энергия",
        "вода",
        "сад",
        "будущее",
        "человек",
        "время",
        "работа",
        "слово",
        "дом",
    ],
    "de": [
        "Suche",
        "Dokument",
        "Modell",
        "Anfrage",
        "Stadt",
        "Fluss",
        "Geschichte",
        "Wissenschaft",
        "Musik",
        "Markt",
        "Energie",
        "Wasser",
        "Garten",
        "Zukunft",
        "Mensch",
        "Zeit",
        "Arbeit",
        "Wort",
        "Haus",
    ],
    "es": [
        "búsqueda",
        "documento",
        "modelo",
        "consulta",
        "ciudad",
        "río",
        "historia",
        "ciencia",
        "música",
        "mercado",
        "energía",
        "agua",
        "jardín",
        "futuro",
        "persona",
        "tiempo",
        "trabajo",
        "palabra",
        "casa",
    ],
    "zh": [
        "搜索",
        "文档",
        "模型",
        "查询",
        "城市",
        "河流",
        "历史",
        "科学",
        "音乐",
        "市场",
        "能源",
        "水",
        "花园",
        "未来",
        "人",
        "时间",
        "工作",
        "词语",
        "房子",
    ],
    "ar": [
        "بحث",
        "وثيقة",
        "نموذج",
        "استعلام",
        "مدينة",
        "نهر",
        "تاريخ",
        "علم",
        "موسيقى",
        "سوق",
        "طاقة",
        "ماء",
        "حديقة",
        "مستقبل",
        "إنسان",
        "وقت",
    ],
}


def texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = rng.choice(list(_WORDS.values()))
        length = min(200, max(5, int(rng.lognormvariate(3.3, 0.8))))  # median ~27 words
        out.append(" ".join(rng.choice(words) for _ in range(length)))
    return out


def texts_of_words(count: int, low: int, high: int, seed: int = 0) -> list[str]:
    """``count`` texts of ``low`` to ``high`` words, each in one of the six languages: documents."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = rng.choice(list(_WORDS.values()))
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(low, high))))
    return out


def requests_of(pool: list[str], count: int, seed: int = 1) -> list[list[str]]:
    """``count`` requests of 1 to 8 texts each, drawn from ``pool`` in order."""
    rng, out, position = random.Random(seed), [], 0
    for _ in range(count):
        size = rng.randint(1, 8)
        out.append([pool[(position + i) % len(pool)] for i in range(size)])
        position += size
    return out


def texts_of_tokens(count: int, low: int, high: int, count_tokens: Callable[[list[str]], list[int]],
                    seed: int = 0) -> list[str]:
    """``count`` texts of ``low`` to ``high`` tokens each (by ``count_tokens``, which counts a
    list of texts at once), spread evenly over that range, in the six languages above:
    documents for bulk indexing (200 to 500), short queries (8 to 16)."""
    rng = random.Random(seed)
    languages = [rng.choice(list(_WORDS.values())) for _ in range(count)]
    targets = [rng.randint(low, high) for _ in range(count)]
    words = [max(1, target // 3) for target in targets]
    out = [""] * count
    todo = list(range(count))
    for attempt in range(16):  # each round redraws the texts not yet right, scaled towards their target
        for i in todo:
            out[i] = " ".join(rng.choice(languages[i]) for _ in range(words[i]))
        counts = count_tokens([out[i] for i in todo])
        # Near the target first (an even spread); later any length in range will do.
        near = attempt < 8
        missed = []
        for i, tokens in zip(todo, counts, strict=True):
            if not (low <= tokens <= high and (not near or abs(tokens - targets[i]) <= max(1, targets[i] // 8))):
                scaled = round(words[i] * targets[i] / tokens)
                if scaled == words[i]:  # too coarse a step to move: one word more or less
                    scaled += 1 if tokens < targets[i] else -1
                words[i] = max(1, scaled)
                missed.append(i)
        todo = missed
        if not todo:
            return out
    raise ValueError(f"could not make {len(todo)} texts of {low} to {high} tokens")

