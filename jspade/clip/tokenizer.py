"""CLIP's byte-level BPE tokenizer, giving the ids of openai/CLIP's `clip.tokenize`.

Text is cleaned as CLIP cleans it (ftfy's fix_text, HTML entities unescaped twice, whitespace runs
collapsed, lower case), split with CLIP's regular expression (letters, single digits, punctuation
runs, English contractions), each piece's UTF-8 bytes mapped to printable characters and merged by
the 48,894 ranked merges of `bpe_simple_vocab_16e6.txt.gz` (openai/CLIP's vocabulary, MIT: see
LICENSE-CLIP beside this file). A prompt is `<|startoftext|> ids... <|endoftext|>`, zero-padded to the
context length (77).
"""
import functools
import gzip
import html
from pathlib import Path

import ftfy
import numpy as np
import regex

from jspade.errors import UnsupportedRequest
from jspade.safe_load import CheckpointError

VOCAB_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_N_MERGES = 49152 - 256 - 2  # the vocabulary has 49408 ids: 256 bytes, 256 word-final bytes, merges, SOT, EOT
_SPLIT = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                       r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


@functools.lru_cache(maxsize=1)
def byte_to_unicode():
    """Byte -> a printable character: printable Latin-1 bytes stand for themselves, the others are
    shifted past 255 (BPE must not see whitespace or control characters)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = {b: chr(b) for b in printable}  # insertion order = vocabulary order
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + len(chars) - len(printable))
    return chars


def clean_text(text):
    """CLIP's cleaning: ftfy, HTML entities unescaped twice, whitespace collapsed, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class Tokenizer:
    def __init__(self, vocab_path=VOCAB_PATH):
        with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:_N_MERGES + 1]]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise CheckpointError(f"{vocab_path}: not CLIP's BPE vocabulary ({len(merges)} merges)")
        byte_chars = list(byte_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.byte_chars = byte_to_unicode()
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self._cache = {SOT: SOT, EOT: EOT}

    def bpe(self, piece):
        """Space-separated BPE tokens of one piece (its last symbol marked word-final)."""
        if piece in self._cache:
            return self._cache[piece]
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):  # merge every occurrence of `best`, left to right
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        result = " ".join(word)
        self._cache[piece] = result
        return result

    def encode(self, text):
        """Token ids of `text`, without SOT/EOT."""
        ids = []
        for piece in _SPLIT.findall(clean_text(text)):
            chars = "".join(self.byte_chars[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(chars).split(" "))
        return ids

    def decode(self, ids):
        byte_of = {c: b for b, c in self.byte_chars.items()}
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(byte_of[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(self, texts, context_length=77, truncate=False):
        """int64 [len(texts), context_length] like `clip.tokenize`: SOT, ids, EOT, zeros. A prompt
        longer than the context raises UnsupportedRequest, or with truncate=True keeps the first
        context_length ids with EOT last."""
        if isinstance(texts, str):
            texts = [texts]
        result = np.zeros((len(texts), context_length), np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > context_length:
                if not truncate:
                    raise UnsupportedRequest(f"the prompt {text!r:.60} has {len(ids)} tokens, more than CLIP's "
                                             f"context of {context_length}")
                ids = ids[:context_length]
                ids[-1] = self.eot_id
            result[row, :len(ids)] = ids
        return result


@functools.lru_cache(maxsize=1)
def default_tokenizer():
    return Tokenizer()


def tokenize(texts, context_length=77, truncate=False):
    """`clip.tokenize` with the shipped vocabulary (see Tokenizer.tokenize)."""
    return default_tokenizer().tokenize(texts, context_length, truncate)
