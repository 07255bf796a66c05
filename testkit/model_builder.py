"""Build randomly initialised models in the exact BAAI/bge-m3 folder layout.

No model hub is reachable from our machines (design.md, "No model hub here"),
so tests and benchmarks build their own model: an XLM-RoBERTa with random
weights, random ColBERT and sparse heads, and a small XLM-R style tokenizer
trained on the spot.  The folder looks like a download of BAAI/bge-m3, so the
server's real loading code and FlagEmbedding (the reference) both load it.

    python -m testkit.model_builder PATH --size tiny|full [--seed N]

"tiny" (hidden 32, 2 layers) is for unit tests; "full" has the real bge-m3
architecture (1024 hidden, 24 layers, 250002-row embedding, ~2.27 GB float32),
so its compute is the real model's: it is for benchmarks (builds in ~20-30 s,
peak RSS ~2.8 GB).  Both share one tokenizer (~36.8k ids, most of them single
characters), and the same size and seed always give the same bytes.
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

# torch, transformers and tokenizers are imported where they are used, so that
# finding an already built model (the usual case) takes milliseconds.
if TYPE_CHECKING:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

Size = Literal["tiny", "full"]

# Bump whenever the bytes written change (corpus, trainer settings, init), so
# that folders built by an older version are rebuilt instead of reused.
BUILDER_VERSION = 3
MARKER_NAME = ".built-by-model-builder.json"

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

# bge-m3 accepts 8192 tokens; XLM-R position ids start at pad_token_id + 1 = 2,
# hence 8194 position embeddings.
MODEL_MAX_LENGTH = 8192
MAX_POSITION_EMBEDDINGS = MODEL_MAX_LENGTH + 2
FULL_VOCAB_SIZE = 250002

_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        # With bge-m3's 0.02, 32-wide layers add only ~1% to the residual
        # stream: every text would get nearly the same dense vector.
        "initializer_range": 0.2,
    },
    "full": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        # bge-m3's own value; with larger ones, 24 layers collapse all tokens
        # of a text onto one vector.
        "initializer_range": 0.02,
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

# Attention weights are drawn with these multiples of initializer_range, for
# both sizes (see _reshape_attention).
_QUERY_KEY_SCALE = 3.0
_VALUE_OUTPUT_SCALE = 0.5
# The sparse head is scaled so that its logits have this standard deviation
# and shifted by this many of them: ~75% of tokens get a positive weight, most
# between 0 and 0.3, as with the real model (see _centre_heads).
_SPARSE_LOGIT_STD = 0.1
_SPARSE_POSITIVE_SHIFT = 0.7

# Upper bound on learned multi-character pieces, on top of the alphabet; the
# small corpus yields far fewer (~650), so most words take several tokens.
MAX_LEARNED_PIECES = 8000
# Single characters are scored by log frequency, shifted down to about where
# the trainer's EM leaves them, so that words are not needlessly spelled out.
_CHAR_SCORE_OFFSET = -2.0

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
    NFKC one), so using it keeps the server's `tokenizers` pipeline and
    FlagEmbedding's transformers pipeline identical.  sentencepiece has the
    map built in; it comes with FlagEmbedding, i.e. with the test requirements.
    """
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    normalizer = sentencepiece.SentencePieceNormalizer(rule_name="nmt_nfkc")
    proto.ParseFromString(normalizer.serialized_model_proto())
    return proto.normalizer_spec.precompiled_charsmap


def train_tokenizer() -> XLMRobertaTokenizerFast:
    """Train a small XLM-R style Unigram tokenizer (under a second, deterministic).

    Ids follow XLM-R: <s>=0, <pad>=1, </s>=2, <unk>=3, pieces, <mask> last.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.trainers import UnigramTrainer
    from transformers import XLMRobertaTokenizerFast

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
        vocab_size=len(alphabet) + MAX_LEARNED_PIECES,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=alphabet,
        show_progress=False,
    )
    lines = _training_lines()
    trainer_tokenizer.train_from_iterator(lines, trainer)

    trained = json.loads(trainer_tokenizer.to_str())["model"]["vocab"]
    # Characters as the model sees them: normalised, words prefixed by "▁".
    char_counts = Counter("".join("▁" + normalizer.normalize_str(word) for line in lines for word in line.split()))
    specials, pieces = _canonical_vocab(trained, char_counts)
    vocab = specials + pieces + [("<mask>", 0.0)]  # <mask> last, as in XLM-R
    tokenizer = XLMRobertaTokenizerFast(vocab=vocab, model_max_length=MODEL_MAX_LENGTH, **SPECIAL_TOKENS)
    # The class builds no normalizer unless given sentencepiece's model.
    tokenizer.backend_tokenizer.normalizer = normalizer
    return tokenizer


def _canonical_vocab(
    trained: list[list[Any]], char_counts: Counter[str]
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Split off the 4 special tokens and make the pieces reproducible.

    The trainer is not quite deterministic: its EM sums in hash-map order, so
    scores vary in the last bits, and the characters that it adds at the end
    (pruned or unseen ones) get made-up scores in hash-set order.  So the
    scores of multi-character pieces are rounded (sentencepiece keeps float32
    ones anyway), each single character is scored from its frequency in the
    corpus (half a count if unseen), and pieces are sorted by score then
    text: the ids, hence the model's weights, are the same on every run.
    """
    entries = [(str(piece), float(score)) for piece, score in trained]
    specials, rest = entries[:4], entries[4:]
    total = sum(char_counts.values())

    def score(piece: str, trained_score: float) -> float:
        if len(piece) > 1:
            return round(trained_score, 6)
        return round(math.log(char_counts.get(piece, 0.5) / total) + _CHAR_SCORE_OFFSET, 6)

    pieces = [(piece, score(piece, trained_score)) for piece, trained_score in rest]
    pieces.sort(key=lambda entry: (-entry[1], entry[0]))
    return specials, pieces


def model_config(size: Size, vocab_size: int) -> XLMRobertaConfig:
    """bge-m3's config.json fields, with the architecture of `size`."""
    import torch
    from transformers import XLMRobertaConfig

    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
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
    path = Path(path)
    try:
        marker = json.loads((path / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return marker == _marker(size, seed) and all((path / name).is_file() for name in MODEL_FILES)


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
    install(path, MODEL_FILES, MARKER_NAME, _marker(size, seed), lambda staging: _write_model(staging, size, seed))
    return path


def install(path: Path, files: Sequence[str], marker_name: str, marker: dict[str, Any],
            write: Callable[[Path], None]) -> None:
    """``write`` the ``files`` into a sibling folder, then move them into ``path``, the marker
    last: a crash or a concurrent build never leaves a folder that claims to be complete."""
    path.mkdir(parents=True, exist_ok=True)
    (path / marker_name).unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.building-", dir=path.parent))
    try:
        write(staging)
        for name in files:
            os.chmod(staging / name, 0o644)  # some writers create files 0600
            os.replace(staging / name, path / name)
        (path / marker_name).write_text(json.dumps(marker, indent=2) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _marker(size: Size, seed: int) -> dict[str, Any]:
    return {"builder_version": BUILDER_VERSION, "size": size, "seed": seed}


def _write_model(folder: Path, size: Size, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaModel

    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(folder)
    # transformers 5 no longer writes special_tokens_map.json; bge-m3 has one,
    # so write it as transformers 4 did, to keep the layout.
    (folder / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")

    # The full model keeps bge-m3's 250002-row embedding: the tokenizer's ids
    # are all below it, and the embedding's size is part of the real model.
    vocab_size = FULL_VOCAB_SIZE if size == "full" else len(tokenizer)
    config = model_config(size, vocab_size)
    config.save_pretrained(folder)

    hidden, std = config.hidden_size, config.initializer_range
    # A private RNG stream: the same seed gives the same weights whatever the
    # caller did with torch's global generator, which is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # The model's own init: N(0, initializer_range) weights, zero biases,
        # unit LayerNorms, zero padding rows.
        model = XLMRobertaModel(config).eval()
        _reshape_attention(model, std)
        colbert = torch.nn.Linear(hidden, hidden)
        sparse = torch.nn.Linear(hidden, 1)
        for head in (colbert, sparse):
            torch.nn.init.normal_(head.weight, std=std)
    _centre_heads(model, tokenizer, colbert, sparse)

    # safetensors writes straight from the tensors' memory: no extra copy.
    save_file(model.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})
    del model
    # Saved by file name, as FlagEmbedding saves them (torch.save names the
    # archive inside after the file, so the bytes are the same on every build).
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")


def _reshape_attention(model: XLMRobertaModel, std: float) -> None:
    """Redraw attention weights so that tokens keep their own identity.

    With every weight at the same std, attention is nearly uniform, so each
    layer adds one text-wide mix to all tokens alike: by the 24th layer the
    full model's tokens of a text are ~0.96 cosine-similar, and the sparse head
    switched whole texts on or off (per-text offsets as large as the spread
    within a text).  Larger query/key weights make attention selective (logits
    of std ~3), smaller value/output weights keep each layer's mix from
    swamping a token's own state: tokens then differ (cosine ~0.5) while the
    [CLS] (dense) vectors still clearly depend on the whole text.
    """
    import torch

    for layer in model.encoder.layer:
        attention = layer.attention
        for linear in (attention.self.query, attention.self.key):
            torch.nn.init.normal_(linear.weight, std=_QUERY_KEY_SCALE * std)
        for linear in (attention.self.value, attention.output.dense):
            torch.nn.init.normal_(linear.weight, std=_VALUE_OUTPUT_SCALE * std)


def _centre_heads(
    model: XLMRobertaModel,
    tokenizer: XLMRobertaTokenizerFast,
    colbert: torch.nn.Linear,
    sparse: torch.nn.Linear,
) -> None:
    """Set the heads' biases from the encoder's mean last hidden state.

    A random encoder's last hidden states share one large common component,
    so with zero biases the sparse head could give 0 to every token (empty
    lexical weights) and ColBERT vectors all leaned one way.  The ColBERT
    bias centres its input (-W @ mean).  The sparse head is scaled to logits
    of std 0.1 and its bias centres them plus a shift that gives a positive
    weight to ~75% of the tokens, like the real model, which weighs most
    tokens: short texts keep some weights, and some tokens get 0.

    The calibration runs in float64, text by text (no padding), so that the
    rounding of CPU kernels cannot move a bias by one float32 step: they are
    the same bytes on every machine.  Only one layer at a time is in float64,
    and the 1 GB word embedding never is (its rows are gathered), so the full
    model needs ~0.2 GB more memory here, not a float64 copy of 4.5 GB.
    """
    import torch

    texts = [_SAMPLES[lang][1] for lang in ("en", "de", "ru", "zh", "ar", "hi")]
    embeddings = model.embeddings
    with torch.no_grad():
        with _in_float64(embeddings.position_embeddings, embeddings.token_type_embeddings, embeddings.LayerNorm):
            states = [
                # inputs_embeds instead of input_ids: the same position ids
                # (no padding), and the word embedding stays in float32.
                embeddings(inputs_embeds=embeddings.word_embeddings.weight[ids].double()[None])
                for ids in tokenizer(texts)["input_ids"]
            ]
        for layer in model.encoder.layer:
            with _in_float64(layer):
                states = [layer(state) for state in states]
        # Without <s> and </s>: the heads' outputs matter on the other tokens.
        centred = torch.cat([state[0, 1:-1] for state in states])
        mean = centred.mean(dim=0)
        centred -= mean

        colbert.bias.copy_(-(colbert.weight.double() @ mean))
        sparse_weight = sparse.weight.double()
        sparse_weight *= _SPARSE_LOGIT_STD / (centred @ sparse_weight.T).std()
        sparse.weight.copy_(sparse_weight)
        sparse.bias.copy_(-(sparse_weight @ mean) + _SPARSE_POSITIVE_SHIFT * _SPARSE_LOGIT_STD)


@contextmanager
def _in_float64(*modules: torch.nn.Module) -> Iterator[None]:
    """Run with `modules` in float64: float32 -> float64 -> float32 is lossless."""
    for module in modules:
        module.double()
    try:
        yield
    finally:
        for module in modules:
            module.float()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.model_builder",
        description="Build a random model in the BAAI/bge-m3 folder layout.",
    )
    parser.add_argument("path", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--size", choices=get_args(Size), required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if is_built(args.path, args.size, args.seed):
        print(f"{args.path}: already built ({args.size}, seed {args.seed})", file=sys.stderr)
        return 0
    build_model(args.path, args.size, args.seed)
    print(f"{args.path}: built ({args.size}, seed {args.seed})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
