#!/usr/bin/env python3
"""Write tiny random sentence-embedding models as today's sentence-transformers saves them,
with sentence-transformers' own embeddings as their golden files.

sentence-transformers 6 writes folders older versions did not: modules.json names its
modules by their new module paths (sentence_transformers.base.modules.transformer.Transformer,
sentence_transformers.sentence_transformer.modules.pooling.Pooling, ...), the Pooling module's
config.json holds one "pooling_mode" string instead of the pooling_mode_* booleans, and the
Transformer's sentence_bert_config.json no longer carries max_seq_length (the tokenizer's
model_max_length in tokenizer_config.json does). Nothing can be downloaded from the hub, so
each model is a random BertModel written with transformers, whose WordPiece vocabulary is the
first VOCAB entries of all-MiniLM-L6-v2's (models/fetch-models.sh fetches it), wrapped in
sentence-transformers modules and saved with SentenceTransformer.save:

    tests/fixtures/encoders/st6-bert-mean/   Transformer -> Pooling("mean") -> Normalize
    tests/fixtures/encoders/st6-bert-cls/    Transformer -> Pooling("cls"), no Normalize

Each folder also gets golden.json:

    {"sentence_transformers": "6.2.0", "max_seq_length": 24, "normalize": true,
     "cases": [{"text": "...", "token_ids": [...], "embedding": [f32 ...]}, ...]}

where token_ids are what the model's tokenizer feeds the model (truncated to
max_seq_length) and embedding is model.encode(text) (the pipeline's output).

Run from the repository root, in the venv of requirements-embeddings.txt:

    bash models/fetch-models.sh
    target/st-venv/bin/python models/reference/make_tiny_encoders.py
"""

import json
import os
import shutil

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer, models
from transformers import BertConfig, BertModel, BertTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MINILM = os.path.join(ROOT, "models/all-minilm-l6-v2")
OUT = os.path.join(ROOT, "tests/fixtures/encoders")
VOCAB = 2500
MAX_SEQ_LENGTH = 24

TEXTS = [
    "the first of the new models",
    "A short sentence, with punctuation!",
    "Numbers 1 2 3 and letters a b c",
    "UPPER and lower case are the same to an uncased vocabulary",
    "words the vocabulary lacks become unknown: zyzzyva quixotic",
    "unicode: café naïve 東京",
    "   leading and trailing spaces   ",
    "one",
    " ".join(["a long text that is cut at the model's maximum sequence length"] * 4),
]


def tokenizer_folder(path):
    """A BERT tokenizer with the first VOCAB word-pieces of all-MiniLM-L6-v2's vocabulary."""
    with open(os.path.join(MINILM, "vocab.txt"), encoding="utf-8") as source:
        vocab = source.read().splitlines()[:VOCAB]
    os.makedirs(path, exist_ok=True)
    vocab_ids = {token: index for index, token in enumerate(vocab)}
    tokenizer = BertTokenizerFast(vocab=vocab_ids, do_lower_case=True, model_max_length=MAX_SEQ_LENGTH)
    assert len(tokenizer.get_vocab()) == VOCAB, len(tokenizer.get_vocab())
    tokenizer.save_pretrained(path)
    return tokenizer


def write(name, pooling, normalize, seed):
    torch.manual_seed(seed)
    work = os.path.join(OUT, f".{name}-transformer")
    shutil.rmtree(work, ignore_errors=True)
    tokenizer = tokenizer_folder(work)
    config = BertConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(work)
    transformer = models.Transformer(work)
    modules = [transformer, models.Pooling(transformer.get_word_embedding_dimension(), pooling)]
    if normalize:
        modules.append(models.Normalize())
    model = SentenceTransformer(modules=modules, device="cpu")
    folder = os.path.join(OUT, name)
    shutil.rmtree(folder, ignore_errors=True)
    model.save(folder)
    shutil.rmtree(work)
    for unneeded in ("README.md", "vocab.txt"):
        path = os.path.join(folder, unneeded)
        if os.path.exists(path):
            os.remove(path)

    # The saved folder is what is checked: load it back as a user would.
    model = SentenceTransformer(folder, device="cpu")
    assert model.max_seq_length == MAX_SEQ_LENGTH, model.max_seq_length
    with open(os.path.join(folder, "modules.json")) as modules_file:
        kinds = [module["type"] for module in json.load(modules_file)]
    assert kinds[0] == "sentence_transformers.base.modules.transformer.Transformer", kinds
    with open(os.path.join(folder, "1_Pooling/config.json")) as pooling_file:
        assert json.load(pooling_file)["pooling_mode"] == pooling
    cases = []
    for text in TEXTS:
        ids = model.preprocess([text])["input_ids"][0].tolist()
        embedding = model.encode(text, convert_to_numpy=True)
        cases.append({"text": text, "token_ids": ids, "embedding": [float(x) for x in embedding.tolist()]})
    assert any(len(case["token_ids"]) == MAX_SEQ_LENGTH for case in cases), "no text reaches max_seq_length"
    assert any(100 in case["token_ids"] for case in cases), "no text has an unknown word-piece"
    golden = {
        "sentence_transformers": sentence_transformers.__version__,
        "pooling": pooling,
        "normalize": normalize,
        "max_seq_length": MAX_SEQ_LENGTH,
        "dimension": config.hidden_size,
        "cases": cases,
    }
    with open(os.path.join(folder, "golden.json"), "w") as out:
        json.dump(golden, out, indent=1)
        out.write("\n")
    print(f"{folder}: {kinds}, {len(cases)} cases")


if __name__ == "__main__":
    write("st6-bert-mean", "mean", True, seed=1)
    write("st6-bert-cls", "cls", False, seed=2)
