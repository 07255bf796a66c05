"""Build randomly initialised models in the exact BAAI/bge-m3 folder layout.

No model hub is reachable from our machines (design.md, "No model hub here"),
so tests and benchmarks build their own model: an XLM-RoBERTa with random
weights, random ColBERT and sparse heads, and a small XLM-R style tokenizer
trained on the spot.  The folder looks like a download of BAAI/bge-m3, so the
server's real loading code and FlagEmbedding (the reference) both load it.

    python -m tests.model_builder PATH --size tiny|full [--seed N]

"tiny" (hidden 32, 2 layers) is for unit tests; "full" has the real bge-m3
architecture (1024 hidden, 24 layers, 250002-row embedding, ~2.27 GB float32),
so its compute is the real model's: it is for benchmarks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Literal, get_args

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import Unigram
from tokenizers.trainers import UnigramTrainer
from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

Size = Literal["tiny", "full"]

# Bump whenever the bytes written change (corpus, trainer settings, init), so
# that folders built by an older version are rebuilt instead of reused.
BUILDER_VERSION = 1
MARKER_NAME = ".built-by-model-builder.json"

# bge-m3 accepts 8192 tokens; XLM-R position ids start at pad_token_id + 1 = 2,
# hence 8194 position embeddings.
MODEL_MAX_LENGTH = 8192
MAX_POSITION_EMBEDDINGS = MODEL_MAX_LENGTH + 2
FULL_VOCAB_SIZE = 250002
# Upper bound on learned multi-character pieces, on top of the alphabet (the
# small corpus yields about 2000).
MAX_LEARNED_PIECES = 8000
_CHAR_SCORE_OFFSET = -2.0

# Files written, in the order they are moved into place (marker excluded).
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "colbert_linear.pt",
    "sparse_linear.pt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

_ARCHITECTURES: dict[Size, dict[str, int]] = {
    "tiny": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
    "full": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
}

SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "cls_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}

# A small multilingual corpus: enough for the Unigram trainer to learn pieces
# in each script, small enough that unseen words split into several tokens,
# as rare words do with the real 250k vocabulary.
_SAMPLES: dict[str, tuple[str, ...]] = {
    "en": (
        "The quick brown fox jumps over the lazy dog.",
        "Machine learning models turn text into vectors that capture its meaning.",
        "Please send the quarterly report to the finance team before Friday.",
        "The weather in London was cold and rainy for most of the week.",
        "She opened the window, and the smell of fresh bread filled the kitchen.",
        "Researchers found that regular exercise improves sleep and memory.",
        "How many tokens does this sentence contain after tokenization?",
        "Our server answers embedding requests in a few milliseconds.",
        "The museum reopened last spring with a new collection of modern paintings.",
        "If the train is late again, we will take a taxi to the airport.",
        "Dense, sparse and multi-vector retrieval each have their own strengths.",
        "He wrote the letter by hand because he wanted it to feel personal.",
        "What is the capital of France? Paris is the capital of France.",
        "The children were playing football in the garden until it got dark.",
    ),
    "de": (
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "Wir treffen uns morgen um neun Uhr vor dem Hauptbahnhof.",
        "Die Ergebnisse wurden in einer internationalen Zeitschrift veröffentlicht.",
        "Könnten Sie mir bitte sagen, wo die nächste Apotheke ist?",
        "Im Winter fahren viele Familien zum Skifahren in die Alpen.",
        "Die Bundesregierung plant neue Maßnahmen für den Klimaschutz.",
        "Mein Großvater erzählte immer Geschichten aus seiner Kindheit.",
        "Das Frühstück wird zwischen sieben und zehn Uhr serviert.",
    ),
    "fr": (
        "Le vif renard brun saute par-dessus le chien paresseux.",
        "Nous avons réservé une table pour quatre personnes ce soir.",
        "La bibliothèque municipale est fermée le dimanche et les jours fériés.",
        "Elle a étudié la médecine à Lyon avant de partir à l'étranger.",
        "Les élèves préparent leurs examens depuis le début du trimestre.",
        "Pourriez-vous m'expliquer comment fonctionne ce système ?",
    ),
    "es": (
        "El veloz zorro marrón salta sobre el perro perezoso.",
        "Mañana iremos a la playa si no llueve.",
        "La economía del país creció un tres por ciento el año pasado.",
        "¿Dónde está la estación de autobuses más cercana?",
        "Los niños jugaban en el parque mientras sus padres conversaban.",
        "A reunião foi adiada para a próxima segunda-feira.",
        "O café da manhã inclui pão, frutas e suco de laranja.",
    ),
    "ru": (
        "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "Москва является столицей и крупнейшим городом России.",
        "Мы начали работу над новым проектом в понедельник.",
        "Пожалуйста, закройте окно, в комнате становится холодно.",
        "Учёные обнаружили новый вид бабочек в горах Кавказа.",
        "Поезд отправляется с третьей платформы через десять минут.",
        "Она прочитала эту книгу за одну ночь и не могла остановиться.",
        "Погода завтра будет солнечной, но ветреной.",
        "Система поиска возвращает самые релевантные документы.",
        "Київ розташований на берегах Дніпра. Дякую за допомогу!",
    ),
    "zh": (
        "我们今天下午去公园散步吧。",
        "北京是中华人民共和国的首都，也是重要的文化中心。",
        "这个模型可以把文本转换成向量，用于语义搜索。",
        "请在星期五之前把报告发给财务部门。",
        "他每天早上六点起床，然后去跑步。",
        "随着科技的发展，人们的生活方式发生了很大的变化。",
        "这家餐厅的饺子非常好吃，价格也不贵。",
        "学生们正在图书馆里准备期末考试。",
        "我不知道明天会不会下雨，所以带了一把伞。",
        "长城是世界上最著名的建筑之一。",
        "如果你有任何问题，请随时联系我们。",
        "春天来了，花都开了，天气越来越暖和。",
    ),
    "ja": (
        "今日はとても良い天気ですね。",
        "東京は日本の首都で、世界有数の大都市です。",
        "この文章をベクトルに変換して検索に使います。",
        "明日の会議は午前十時から始まります。",
        "駅まで歩いて十分ぐらいかかります。",
        "私は毎朝コーヒーを飲みながらニュースを読みます。",
    ),
    "ko": (
        "안녕하세요, 만나서 반갑습니다.",
        "서울은 대한민국의 수도입니다.",
        "오늘 저녁에 같이 영화를 보러 갈까요?",
        "이 모델은 문장을 벡터로 변환합니다.",
        "내일은 비가 올 것 같아서 우산을 챙겼어요.",
    ),
    "ar": (
        "مرحبا بالعالم، كيف حالك اليوم؟",
        "القاهرة هي عاصمة مصر وأكبر مدنها.",
        "يدرس الطلاب في المكتبة استعدادا للامتحانات.",
        "أرسل التقرير إلى الفريق قبل يوم الجمعة من فضلك.",
        "تعتبر اللغة العربية من أكثر اللغات انتشارا في العالم.",
        "ذهبنا إلى السوق لشراء الخضار والفواكه الطازجة.",
        "يعمل الباحثون على تطوير نماذج جديدة لفهم النصوص.",
        "الطقس حار جدا في الصيف وبارد قليلا في الشتاء.",
    ),
    "hi": (
        "नमस्ते दुनिया, आप कैसे हैं?",
        "भारत की राजधानी नई दिल्ली है।",
        "मैं हर सुबह चाय पीता हूँ और अख़बार पढ़ता हूँ।",
        "कृपया शुक्रवार से पहले रिपोर्ट भेज दीजिए।",
        "बच्चे पार्क में क्रिकेट खेल रहे हैं।",
        "यह मॉडल पाठ को वेक्टर में बदलता है।",
        "कल बारिश होने की संभावना है, इसलिए छाता साथ ले जाएँ।",
        "हिंदी भारत में सबसे अधिक बोली जाने वाली भाषा है।",
    ),
    "misc": (
        "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας. Καλημέρα, τι κάνετε σήμερα;",
        "İstanbul, Türkiye'nin en kalabalık şehridir. Yarın sabah yola çıkacağız.",
        "שלום עולם, מה שלומך היום? ירושלים היא עיר עתיקה.",
        "สวัสดีครับ ยินดีที่ได้รู้จัก กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
        "Great job team! 🎉🎉 Let's celebrate 🍕🍺",
        "I ❤️ this song 😍🎶 and 😂😂😂 that was hilarious 👍",
        "Weather today: ☀️ 25°C, tomorrow 🌧️ 18°C. 🚀 Launch at 10:30 UTC ⏰",
        "Привет 👋 你好 👋 مرحبا 👋 hello 👋 नमस्ते 👋",
        "def embed(texts: list[str]) -> np.ndarray: return model.encode(texts)",
        "GET /v1/embeddings HTTP/1.1 Content-Type: application/json",
        "Order #48213 shipped on 2024-03-15 for $1,299.99 (qty: 3).",
        "The value of pi is approximately 3.14159, and e is about 2.71828.",
        "user@example.com https://example.org/path?query=1&lang=en",
        '{"input": ["hello world"], "model": "bge-m3", "dimensions": 1024}',
    ),
}

# Characters kept in the vocabulary even when the corpus lacks them, so that
# <unk> stays as rare as with the real tokenizer, which knows nearly every
# character: whole alphabets, punctuation, emoji, all common CJK ideographs
# and Hangul syllables.  They are most of the vocabulary's ~40k entries.
_CODE_POINT_RANGES = (
    (0x0020, 0x024F),  # Basic Latin, Latin-1, Latin Extended-A/B
    (0x0370, 0x03FF),  # Greek
    (0x0400, 0x04FF),  # Cyrillic
    (0x0590, 0x05FF),  # Hebrew
    (0x0600, 0x06FF),  # Arabic
    (0x0900, 0x097F),  # Devanagari
    (0x0E00, 0x0E7F),  # Thai
    (0x2010, 0x205E),  # General punctuation
    (0x20A0, 0x20BF),  # Currency symbols
    (0x2190, 0x21FF),  # Arrows
    (0x2200, 0x22FF),  # Mathematical operators
    (0x2600, 0x27BF),  # Miscellaneous symbols, dingbats
    (0x3000, 0x303F),  # CJK punctuation
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7A3),  # Hangul syllables
    (0xFF01, 0xFF65),  # Fullwidth forms (NFKC maps most to ASCII)
    (0x1F300, 0x1F64F),  # Pictographs, emoticons
    (0x1F680, 0x1F6FF),  # Transport and map symbols
    (0x1F900, 0x1F9FF),  # Supplemental symbols and pictographs
)
def _training_lines() -> list[str]:
    """A few hundred lines mixing the samples, the same on every call."""
    rng = random.Random(20240101)
    languages = sorted(_SAMPLES)
    lines = [sentence for lang in languages for sentence in _SAMPLES[lang]]
    for _ in range(400):
        samples = _SAMPLES[rng.choice(languages)]
        lines.append(" ".join(rng.sample(samples, rng.randint(1, min(3, len(samples))))))
    return lines


def _initial_alphabet() -> list[str]:
    chars = {chr(cp) for first, last in _CODE_POINT_RANGES for cp in range(first, last + 1)}
    # Sorted so the trainer sees the same input on every run.
    return sorted(c for c in chars if c.isprintable() and not c.isspace())


def _nfkc_charsmap() -> bytes:
    """The precompiled "nmt_nfkc" normalisation map, as in XLM-R's sentencepiece model.

    A Precompiled normalizer is the only one that transformers keeps when it
    rebuilds an XLM-R tokenizer from tokenizer.json (it drops e.g. a plain
    NFKC normalizer), so using it keeps the server's `tokenizers` pipeline and
    FlagEmbedding's transformers pipeline identical.  sentencepiece ships the
    map built in; it comes with FlagEmbedding, i.e. with the test requirements.
    """
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    normalizer = sentencepiece.SentencePieceNormalizer(rule_name="nmt_nfkc")
    proto.ParseFromString(normalizer.serialized_model_proto())
    return proto.normalizer_spec.precompiled_charsmap


def train_tokenizer() -> XLMRobertaTokenizerFast:
    """Train a small XLM-R style Unigram tokenizer (a second or so, deterministic).

    Ids follow XLM-R: <s>=0, <pad>=1, </s>=2, <unk>=3, pieces, then <mask> last.
    """
    normalizer = normalizers.Precompiled(_nfkc_charsmap())
    # Train with the very pipeline that XLMRobertaTokenizerFast builds, so the
    # learned pieces are the ones it will produce.
    trainer_tokenizer = Tokenizer(Unigram())
    trainer_tokenizer.normalizer = normalizer
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
        ]
    )
    alphabet = _initial_alphabet()
    trainer = UnigramTrainer(
        # Room for every character plus the pieces; the small corpus yields
        # far fewer pieces than allowed, so most words take several tokens.
        vocab_size=len(alphabet) + MAX_LEARNED_PIECES,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=alphabet,
        show_progress=False,
    )
    lines = _training_lines()
    trainer_tokenizer.train_from_iterator(lines, trainer)

    trained = json.loads(trainer_tokenizer.to_str())["model"]["vocab"]
    # Characters as the model sees them: normalised, spaces turned into "▁".
    char_counts = Counter("".join(
        "▁" + normalizer.normalize_str(word) for line in lines for word in line.split()
    ))
    specials, pieces = _canonical_vocab(trained, char_counts)
    vocab = specials + pieces + [("<mask>", 0.0)]  # <mask> last, as in XLM-R
    tokenizer = XLMRobertaTokenizerFast(
        vocab=vocab, model_max_length=MODEL_MAX_LENGTH, **SPECIAL_TOKENS
    )
    tokenizer.backend_tokenizer.normalizer = normalizer
    return tokenizer


def _canonical_vocab(
    trained: list[list[object]], char_counts: Counter[str]
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Split off the 4 special tokens and make the pieces reproducible.

    The trainer is not quite deterministic: its EM sums in hash-map order, so
    scores vary in the last bits, and the characters that it adds at the end
    (pruned or unseen ones) get made-up scores in hash-set order.  So the
    scores of multi-character pieces are rounded (sentencepiece keeps float32
    ones anyway), each single character is scored from its frequency in the
    corpus, and pieces are sorted by score then text: the ids, hence the
    model's weights, are then the same on every run.
    """
    entries = [(str(piece), float(score)) for piece, score in trained]  # type: ignore[arg-type]
    specials, rest = entries[:4], entries[4:]
    total = sum(char_counts.values())

    def score(piece: str, trained_score: float) -> float:
        if len(piece) > 1:
            return round(trained_score, 6)
        # Half a count for characters the corpus lacks.  The offset puts
        # characters a little below the learned pieces, roughly where EM
        # leaves them, so that words are not needlessly spelled out.
        log_freq = math.log(char_counts.get(piece, 0.5) / total)
        return round(log_freq + _CHAR_SCORE_OFFSET, 6)

    pieces = sorted(((p, score(p, s)) for p, s in rest), key=lambda entry: (-entry[1], entry[0]))
    return specials, pieces


def model_config(size: Size, vocab_size: int) -> XLMRobertaConfig:
    """The bge-m3 config.json fields, with the architecture of `size`."""
    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        initializer_range=0.02,
        position_embedding_type="absolute",
        classifier_dropout=None,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        use_cache=True,
        output_past=True,
        architectures=["XLMRobertaModel"],
        **_ARCHITECTURES[size],
    )
    config.dtype = torch.float32
    return config


def is_built(path: Path, size: Size, seed: int = 0) -> bool:
    """Whether `path` holds a complete model built here with this size and seed."""
    try:
        marker = json.loads((Path(path) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    expected = _marker(size, seed)
    return marker == expected and all((Path(path) / name).is_file() for name in MODEL_FILES)


def build_model(path: Path, size: Size, seed: int = 0) -> Path:
    """Write a random bge-m3 look-alike into `path` and return `path`.

    Deterministic: the same size and seed give the same weights, byte for byte.
    Idempotent: returns at once when `path` already holds that model.
    """
    if size not in _ARCHITECTURES:
        raise ValueError(f"size must be one of {sorted(_ARCHITECTURES)}, not {size!r}")
    path = Path(path)
    if is_built(path, size, seed):
        return path
    path.mkdir(parents=True, exist_ok=True)
    # Build in a sibling folder and move the files in, marker last: a crash or
    # a concurrent build never leaves a folder that claims to be complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    try:
        (path / MARKER_NAME).unlink(missing_ok=True)
        _write_model(staging, size, seed)
        for name in MODEL_FILES:
            os.replace(staging / name, path / name)
        (path / MARKER_NAME).write_text(json.dumps(_marker(size, seed), indent=2) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _marker(size: Size, seed: int) -> dict[str, object]:
    return {"builder_version": BUILDER_VERSION, "size": size, "seed": seed}


def _write_model(folder: Path, size: Size, seed: int) -> None:
    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(folder)
    # transformers 5 no longer writes special_tokens_map.json; bge-m3 has one,
    # so write it as transformers 4 did, to keep the layout.
    special_map = {name: token for name, token in SPECIAL_TOKENS.items()}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")

    # The full model keeps bge-m3's 250002-row embedding: the tokenizer's ids
    # are all below it, and the embedding's size is part of the real model.
    vocab_size = FULL_VOCAB_SIZE if size == "full" else len(tokenizer)
    config = model_config(size, vocab_size)
    config.save_pretrained(folder)

    hidden = config.hidden_size
    # A private RNG stream: the same seed gives the same weights whatever the
    # caller did with torch's global generator, which is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # The model's own init: N(0, 0.02) weights, zero biases, unit
        # LayerNorms, zero padding row; activations stay in a sane range.
        model = XLMRobertaModel(config).eval()
        colbert = _random_linear(hidden, hidden, config.initializer_range)
        sparse = _random_linear(hidden, 1, config.initializer_range)

    # safetensors writes straight from the tensors' memory: no extra copy.
    save_file(model.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})
    del model
    # Saved by file name, as FlagEmbedding saves them (torch.save names the
    # archive after the file, so the bytes are the same on every build).
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")


def _random_linear(in_features: int, out_features: int, std: float) -> torch.nn.Linear:
    linear = torch.nn.Linear(in_features, out_features)
    torch.nn.init.normal_(linear.weight, mean=0.0, std=std)
    # Zero bias: the sparse head's relu(w . h) is then positive for about half
    # of the tokens, so sparse outputs have both kept and dropped tokens.
    torch.nn.init.zeros_(linear.bias)
    return linear


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.model_builder",
        description="Build a random model in the BAAI/bge-m3 folder layout.",
    )
    parser.add_argument("path", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--size", choices=get_args(Size), required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    reused = is_built(args.path, args.size, args.seed)
    build_model(args.path, args.size, args.seed)
    state = "already built" if reused else "built"
    print(f"{args.path}: {state} ({args.size}, seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
