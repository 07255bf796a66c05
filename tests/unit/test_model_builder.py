"""The random bge-m3 builder: layout, tokenizer agreement, idempotence (FlagEmbedding running its model:
tests/integration/test_model_builder.py)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from testkit.model_builder import MARKER_NAME, MODEL_FILES, build_model, is_built

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEXTS = [
    "The quick brown fox jumps over the lazy dog and keeps running through the forest.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю — сказал учёный.",
    "北京是中华人民共和国的首都，昨天下午我们在公园里散步。",
    "مرحبا بالعالم، كيف حالك اليوم؟ أتمنى أن تكون بخير.",
    "नमस्ते दुनिया, आज मौसम बहुत अच्छा है।",
    "Great job team! 🎉🎉 Let's celebrate 🍕🍺 👋🏽",
    # NFKC at work: full-width letters, a ligature, a circled digit, odd spaces.
    "  ｆｕｌｌ－ｗｉｄｔｈ\tﬁne ①\u00a0\u3000text \n with   spaces  ",
    "Special tokens in text: <s> hello </s> <mask> <pad> <unk>",
    "",
    "x",
]
LONG_TEXT = " ".join(TEXTS[:6]) * 150  # well over 8192 tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("models") / "bge-m3-tiny", "tiny")


def test_layout(model_dir: Path) -> None:
    for name in (*MODEL_FILES, MARKER_NAME):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "xlm-roberta"
    assert config["architectures"] == ["XLMRobertaModel"]
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (1, 0, 2)
    assert config["max_position_embeddings"] == 8194
    assert config["type_vocab_size"] == 1
    hidden = config["hidden_size"]
    assert hidden == 32

    colbert = torch.load(model_dir / "colbert_linear.pt", weights_only=True)
    sparse = torch.load(model_dir / "sparse_linear.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in colbert.items()} == {"weight": (hidden, hidden), "bias": (hidden,)}
    assert {k: tuple(v.shape) for k, v in sparse.items()} == {"weight": (1, hidden), "bias": (1,)}

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")}
    assert ids == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": tokenizer.get_vocab_size() - 1}
    assert config["vocab_size"] == tokenizer.get_vocab_size()


@pytest.fixture(scope="module")
def reference_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("max_length", [4, 16, 512, 8192])
def test_tokenizers_and_transformers_agree(
    model_dir: Path, reference_tokenizer: PreTrainedTokenizerBase, max_length: int
) -> None:
    # The server tokenizes with the plain `tokenizers` library, FlagEmbedding
    # with transformers: both must give the same ids, truncation included.
    from tokenizers import Tokenizer

    plain = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    plain.enable_truncation(max_length=max_length)
    for text in [*TEXTS, LONG_TEXT]:
        expected = reference_tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        ids = plain.encode(text).ids
        assert ids == expected, text
        assert ids[0] == 0 and ids[-1] == 2 and len(ids) <= max_length
    assert len(plain.encode(LONG_TEXT).ids) == max_length


def test_unknown_tokens_are_rare(model_dir: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = tokenizer.encode(" ".join(text for text in TEXTS if "<unk>" not in text)).ids
    assert 3 not in ids
    # Like XLM-R on rare words, unseen words take several pieces.
    sentence = "Yesterday my neighbour repaired an old bicycle"
    assert len(tokenizer.encode(sentence, add_special_tokens=False).ids) >= 2 * len(sentence.split())


def test_idempotent_and_deterministic(model_dir: Path, tmp_path: Path) -> None:
    assert is_built(model_dir, "tiny", 0)
    assert not is_built(model_dir, "tiny", 1)
    assert not is_built(model_dir, "full", 0)
    assert json.loads((model_dir / MARKER_NAME).read_text())["seed"] == 0

    mtimes = {name: (model_dir / name).stat().st_mtime_ns for name in MODEL_FILES}
    started = time.monotonic()
    assert build_model(model_dir, "tiny") == model_dir
    assert time.monotonic() - started < 0.5
    assert mtimes == {name: (model_dir / name).stat().st_mtime_ns for name in MODEL_FILES}

    # A folder missing a file is rebuilt, to the same bytes.
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    (copy / "model.safetensors").unlink()
    assert not is_built(copy, "tiny", 0)
    build_model(copy, "tiny")
    for name in MODEL_FILES:
        assert (copy / name).read_bytes() == (model_dir / name).read_bytes(), name
