"""A deterministic multilingual workload: texts of long-tailed lengths (5 to 200 words)."""

from __future__ import annotations

import random

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


def requests_of(pool: list[str], count: int, seed: int = 1) -> list[list[str]]:
    """``count`` requests of 1 to 8 texts each, drawn from ``pool`` in order."""
    rng, out, position = random.Random(seed), [], 0
    for _ in range(count):
        size = rng.randint(1, 8)
        out.append([pool[(position + i) % len(pool)] for i in range(size)])
        position += size
    return out
